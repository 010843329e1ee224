package dev.sluice.flink;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * The sluice native frame protocol ({@code proto/proto/frames.proto}), encoded by hand: no
 * protobuf-java needed. Copy this class to write your own client.
 *
 * <p>Framing: every frame is a varint length prefix followed by that many bytes of one protobuf
 * message (what {@code MessageLite.writeDelimitedTo} writes). The client sends {@code ClientFrame}s
 * and reads {@code ServerFrame}s.
 *
 * <p>Protobuf wire format used here (proto3): a field is a key {@code (field_number << 3) |
 * wire_type} written as a varint, then its value. Wire type 0 (varint) carries {@code int64},
 * {@code uint64}, {@code uint32}, {@code int32} and enums; negative {@code int32}/{@code int64} are
 * sign-extended to 64 bits, so they take 10 bytes. Wire type 2 (length-delimited) carries {@code
 * bytes}, {@code string} and embedded messages: a varint byte count, then the bytes. proto3 omits
 * fields holding their default (0, empty); {@code optional} fields are written whenever present.
 * A {@code oneof} is just the one field that is set.
 *
 * <pre>
 * ClientFrame { oneof kind { Hello hello = 1; Records records = 2; Watermark watermark = 3;
 *                            Idle idle = 4; Flush flush = 5; } }
 * Hello     { string pipeline = 1; string deployment = 2; string channel_id = 3;
 *             uint32 protocol_version = 4; }
 * Records   { repeated Record records = 1; }
 * Record    { bytes key = 1; bytes value = 2; repeated Header headers = 3;
 *             int64 event_time_ms = 4; string topic = 5; optional int32 partition = 6; }
 * Header    { string key = 1; bytes value = 2; }
 * Watermark { int64 watermark_ms = 1; }
 * Idle      { }
 * Flush     { uint64 seq = 1; }
 * ServerFrame { oneof kind { FlushAck flush_ack = 1; Error error = 2; } }
 * FlushAck  { uint64 seq = 1; uint64 admitted = 2; uint64 dropped = 3; }
 * Error     { ErrorCode code = 1; string message = 2; }
 * </pre>
 */
public final class Frames {
    private Frames() {}

    /** Protocol version this client speaks ({@code Hello.protocol_version}). */
    public static final int PROTOCOL_VERSION = 1;

    private static final int VARINT = 0;
    private static final int I64 = 1;
    private static final int LEN = 2;
    private static final int I32 = 5;

    /** One record header. */
    public record Header(String key, byte[] value) {}

    /**
     * One sink-bound record. {@code key} may be empty (no key); {@code topic} empty means the
     * sidecar's default topic; {@code partition} null means the sink chooses.
     */
    public record Record(
            byte[] key,
            byte[] value,
            List<Header> headers,
            long eventTimeMs,
            String topic,
            Integer partition) {}

    // ---------------------------------------------------------------- low-level writers

    /** Unsigned LEB128 varint; a negative long is written as its 64-bit two's complement. */
    static void varint(ByteArrayOutputStream out, long v) {
        while ((v & ~0x7FL) != 0) {
            out.write((int) ((v & 0x7F) | 0x80));
            v >>>= 7;
        }
        out.write((int) v);
    }

    static void key(ByteArrayOutputStream out, int field, int wireType) {
        varint(out, ((long) field << 3) | wireType);
    }

    /** A varint field, omitted when 0 (proto3 default). */
    static void varintField(ByteArrayOutputStream out, int field, long v) {
        if (v != 0) {
            key(out, field, VARINT);
            varint(out, v);
        }
    }

    /** A length-delimited field (bytes, string or embedded message), always written. */
    static void lenField(ByteArrayOutputStream out, int field, byte[] bytes) {
        key(out, field, LEN);
        varint(out, bytes.length);
        out.write(bytes, 0, bytes.length);
    }

    /** A bytes or string field, omitted when empty (proto3 default). */
    static void bytesField(ByteArrayOutputStream out, int field, byte[] bytes) {
        if (bytes != null && bytes.length > 0) {
            lenField(out, field, bytes);
        }
    }

    static void stringField(ByteArrayOutputStream out, int field, String s) {
        if (s != null && !s.isEmpty()) {
            lenField(out, field, s.getBytes(StandardCharsets.UTF_8));
        }
    }

    /** Wraps a message as field {@code kind} of a ClientFrame and adds the length prefix. */
    static byte[] frame(int kind, byte[] message) {
        ByteArrayOutputStream body = new ByteArrayOutputStream(message.length + 6);
        lenField(body, kind, message); // an embedded message is written even when empty (Idle)
        ByteArrayOutputStream out = new ByteArrayOutputStream(body.size() + 5);
        varint(out, body.size());
        out.writeBytes(body.toByteArray());
        return out.toByteArray();
    }

    // ---------------------------------------------------------------- client frames

    /** {@code ClientFrame{hello}}: must be the first frame of a connection. */
    public static byte[] hello(String pipeline, String deployment, String channelId) {
        ByteArrayOutputStream m = new ByteArrayOutputStream();
        stringField(m, 1, pipeline);
        stringField(m, 2, deployment);
        stringField(m, 3, channelId);
        varintField(m, 4, PROTOCOL_VERSION);
        return frame(1, m.toByteArray());
    }

    /** One encoded {@code Record} message (without its field key), to be batched by {@link #records}. */
    public static byte[] record(Record r) {
        ByteArrayOutputStream m = new ByteArrayOutputStream(64 + r.value().length);
        bytesField(m, 1, r.key());
        bytesField(m, 2, r.value());
        for (Header h : r.headers()) {
            ByteArrayOutputStream hm = new ByteArrayOutputStream();
            stringField(hm, 1, h.key());
            bytesField(hm, 2, h.value());
            lenField(m, 3, hm.toByteArray());
        }
        varintField(m, 4, r.eventTimeMs());
        stringField(m, 5, r.topic());
        if (r.partition() != null) { // optional: presence is explicit, 0 is written too
            key(m, 6, VARINT);
            varint(m, r.partition()); // int32: sign-extended to 64 bits when negative
        }
        return m.toByteArray();
    }

    /** {@code ClientFrame{records}} from records already encoded by {@link #record}. */
    public static byte[] records(List<byte[]> encodedRecords) {
        ByteArrayOutputStream m = new ByteArrayOutputStream();
        for (byte[] r : encodedRecords) {
            lenField(m, 1, r);
        }
        return frame(2, m.toByteArray());
    }

    /** {@code ClientFrame{watermark}}. */
    public static byte[] watermark(long watermarkMs) {
        ByteArrayOutputStream m = new ByteArrayOutputStream();
        varintField(m, 1, watermarkMs);
        return frame(3, m.toByteArray());
    }

    /** {@code ClientFrame{idle}}. */
    public static byte[] idle() {
        return frame(4, new byte[0]);
    }

    /** {@code ClientFrame{flush}}. */
    public static byte[] flush(long seq) {
        ByteArrayOutputStream m = new ByteArrayOutputStream();
        varintField(m, 1, seq);
        return frame(5, m.toByteArray());
    }

    // ---------------------------------------------------------------- server frames

    /** A decoded {@code ServerFrame}: either a FlushAck or an Error. */
    public record ServerFrame(
            boolean isFlushAck,
            long seq,
            long admitted,
            long dropped,
            int errorCode,
            String errorMessage) {

        /** The {@code ErrorCode} enum name, as in frames.proto. */
        public String errorName() {
            String[] names = {
                "UNSPECIFIED", "MALFORMED_FRAME", "FRAME_TOO_LARGE", "HELLO_REQUIRED",
                "DUPLICATE_HELLO", "UNKNOWN_GATE", "SINK_FAILED", "UNSUPPORTED_VERSION",
                "SHUTTING_DOWN", "INTERNAL"
            };
            return errorCode >= 0 && errorCode < names.length
                    ? "ERROR_CODE_" + names[errorCode]
                    : "ERROR_CODE_" + errorCode;
        }
    }

    /** Reads one length-prefixed {@code ServerFrame}; EOFException when the sidecar closed. */
    public static ServerFrame readServerFrame(InputStream in, int maxBytes) throws IOException {
        long len = readVarint(in);
        if (len < 0 || len > maxBytes) {
            throw new IOException("server frame of " + len + " bytes exceeds " + maxBytes);
        }
        byte[] body = in.readNBytes((int) len);
        if (body.length != len) {
            throw new EOFException("server frame cut short");
        }
        Reader r = new Reader(body);
        ServerFrame frame = null;
        while (r.more()) {
            long k = r.varint();
            int field = (int) (k >>> 3);
            int type = (int) (k & 7);
            if (type == LEN && field == 1) {
                frame = flushAck(new Reader(r.bytes()));
            } else if (type == LEN && field == 2) {
                frame = error(new Reader(r.bytes()));
            } else {
                r.skip(type); // unknown fields are skipped, as protobuf requires
            }
        }
        if (frame == null) {
            throw new IOException("server frame has no kind");
        }
        return frame;
    }

    private static ServerFrame flushAck(Reader r) throws IOException {
        long seq = 0, admitted = 0, dropped = 0;
        while (r.more()) {
            long k = r.varint();
            int field = (int) (k >>> 3);
            int type = (int) (k & 7);
            if (type == VARINT && field == 1) seq = r.varint();
            else if (type == VARINT && field == 2) admitted = r.varint();
            else if (type == VARINT && field == 3) dropped = r.varint();
            else r.skip(type);
        }
        return new ServerFrame(true, seq, admitted, dropped, 0, "");
    }

    private static ServerFrame error(Reader r) throws IOException {
        int code = 0;
        String message = "";
        while (r.more()) {
            long k = r.varint();
            int field = (int) (k >>> 3);
            int type = (int) (k & 7);
            if (type == VARINT && field == 1) code = (int) r.varint();
            else if (type == LEN && field == 2) message = new String(r.bytes(), StandardCharsets.UTF_8);
            else r.skip(type);
        }
        return new ServerFrame(false, 0, 0, 0, code, message);
    }

    static long readVarint(InputStream in) throws IOException {
        long v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            int b = in.read();
            if (b < 0) {
                throw new EOFException("sidecar closed the connection");
            }
            v |= (long) (b & 0x7F) << shift;
            if ((b & 0x80) == 0) {
                return v;
            }
        }
        throw new IOException("varint longer than 10 bytes");
    }

    /** A cursor over one message's bytes. */
    private static final class Reader {
        private final byte[] buf;
        private int pos;

        Reader(byte[] buf) {
            this.buf = buf;
        }

        boolean more() {
            return pos < buf.length;
        }

        long varint() throws IOException {
            long v = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                if (pos >= buf.length) throw new IOException("truncated varint");
                int b = buf[pos++] & 0xFF;
                v |= (long) (b & 0x7F) << shift;
                if ((b & 0x80) == 0) return v;
            }
            throw new IOException("varint longer than 10 bytes");
        }

        byte[] bytes() throws IOException {
            long n = varint();
            if (n < 0 || n > buf.length - pos) throw new IOException("truncated field");
            byte[] b = java.util.Arrays.copyOfRange(buf, pos, pos + (int) n);
            pos += (int) n;
            return b;
        }

        void skip(int wireType) throws IOException {
            switch (wireType) {
                case VARINT -> varint();
                case I64 -> pos += 8;
                case LEN -> bytes();
                case I32 -> pos += 4;
                default -> throw new IOException("unsupported wire type " + wireType);
            }
            if (pos > buf.length) throw new IOException("truncated field");
        }
    }
}
