package dev.sluice.flink;

import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Self-check of the hand encoding, driven by the Rust test {@code flink_frames_match_the_schema}:
 * writes sample ClientFrames to {@code args[0]} (decoded there with the real prost types), and
 * decodes the ServerFrames in {@code args[1]} (encoded there with prost), printing one line each.
 */
public final class FrameSamples {
    public static void main(String[] args) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(Frames.hello("demo/orders", "orders-v1", "3"));
        out.write(Frames.records(List.of(
                Frames.record(new Frames.Record(
                        "k1".getBytes(StandardCharsets.UTF_8),
                        "{\"n\":1}".getBytes(StandardCharsets.UTF_8),
                        List.of(new Frames.Header("trace", new byte[] {0, 1, (byte) 0xff})),
                        1_700_000_000_123L, "orders", 7)),
                Frames.record(new Frames.Record(
                        new byte[0], new byte[300], List.of(), -5L, "", 0)),
                Frames.record(new Frames.Record(
                        "ü".getBytes(StandardCharsets.UTF_8), new byte[] {42}, List.of(),
                        0L, "", -2)),
                Frames.record(new Frames.Record(
                        "k".getBytes(StandardCharsets.UTF_8), new byte[0], List.of(),
                        Long.MAX_VALUE, "t", null)))));
        out.write(Frames.watermark(Long.MIN_VALUE));
        out.write(Frames.watermark(Long.MAX_VALUE));
        out.write(Frames.watermark(0));
        out.write(Frames.idle());
        out.write(Frames.flush(1));
        out.write(Frames.flush(-1L)); // uint64 max
        try (FileOutputStream f = new FileOutputStream(args[0])) {
            out.writeTo(f);
        }
        try (InputStream in = new FileInputStream(args[1])) {
            while (true) {
                Frames.ServerFrame f;
                try {
                    f = Frames.readServerFrame(in, 1 << 20);
                } catch (EOFException e) {
                    break;
                }
                if (f.isFlushAck()) {
                    System.out.println("ack " + f.seq() + " " + f.admitted() + " " + f.dropped());
                } else {
                    System.out.println("error " + f.errorName() + " " + f.errorMessage());
                }
            }
        }
    }
}
