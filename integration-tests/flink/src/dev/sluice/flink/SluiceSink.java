package dev.sluice.flink;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Serializable;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ScheduledFuture;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The reference Flink sink for a sluice gate sidecar (Sink V2, at-least-once).
 *
 * <p>Every sink subtask opens one connection (a <em>channel</em>) to the sidecar's Unix socket and
 * speaks the native frame protocol ({@link Frames}):
 *
 * <ul>
 *   <li>{@code Hello{pipeline, deployment, channel_id = subtask index}} first. The subtask index is
 *       stable across restarts, so a restarted subtask continues the same channel in the gate.
 *   <li>{@code Records} batches: key, value, headers and topic from a {@link RecordSerializer}, the
 *       event time from {@link SinkWriter.Context#timestamp()} (the gate compares it with the
 *       barrier, so every record needs one: assign timestamps with a WatermarkStrategy).
 *   <li>{@code Watermark} whenever Flink hands the writer a larger watermark ({@link
 *       #writeWatermark}); pending records are sent first, so the order on the wire is Flink's.
 *   <li>{@code Idle}: Flink does not tell a Sink V2 writer that its input went idle (watermark
 *       status stays inside the operator), so idleness can only be observed as silence. By default
 *       the writer sends nothing and the sidecar's own {@code --idle-timeout} applies; {@link
 *       Options#idleAfterMs} &gt; 0 makes the writer send {@code Idle} itself after that much
 *       silence. Keep both longer than the job's worst restart time: an idle channel does not hold
 *       back the drain.
 *   <li>{@code Flush{seq}} at every {@link #flush} (Flink calls it before each checkpoint barrier
 *       and at end of input); the writer blocks until {@code FlushAck{seq}}, so a completed
 *       checkpoint means every earlier record was admitted-and-written or dropped by the gate.
 * </ul>
 *
 * <p>Failure: a {@code ServerFrame.Error}, a broken connection or a timeout fails the task with an
 * IOException. Flink restarts it from the last completed checkpoint and replays; the new writer
 * connects again (retrying while the sidecar is not there) and says Hello again. Records sent but
 * never acknowledged are exactly the ones Flink replays: at-least-once. The records a gate had
 * admitted after that checkpoint are admitted again, which is the only kind of duplicate this sink
 * can cause.
 */
public final class SluiceSink<T> implements Sink<T> {
    private static final long serialVersionUID = 1L;

    /** Turns an element into the record sent to the gate (the event time is set by the writer). */
    @FunctionalInterface
    public interface RecordSerializer<T> extends Serializable {
        Frames.Record toRecord(T element, long eventTimeMs);
    }

    /** Where and how to connect. */
    public static final class Options implements Serializable {
        private static final long serialVersionUID = 1L;
        /** The sidecar's Unix socket (its {@code --socket}). */
        public String socket = "/tmp/sluice-gate.sock";
        /** Pipeline and deployment, as configured on the sidecar. */
        public String pipeline;
        public String deployment;
        /** Records per {@code Records} frame. */
        public int maxBatch = 500;
        /** Pending records are sent at least this often (ms), so output does not wait for a checkpoint. */
        public long lingerMs = 20;
        /** Send {@code Idle} after this much silence (ms); 0 = never (the sidecar's idle timeout applies). */
        public long idleAfterMs = 0;
        /** How long to keep trying to connect (the sidecar may start after the job). */
        public long connectTimeoutMs = 60_000;
        /** Largest ServerFrame accepted. */
        public int maxServerFrame = 1 << 20;
    }

    private final Options options;
    private final RecordSerializer<T> serializer;

    public SluiceSink(Options options, RecordSerializer<T> serializer) {
        if (options.pipeline == null || options.deployment == null) {
            throw new IllegalArgumentException("pipeline and deployment are required");
        }
        this.options = options;
        this.serializer = serializer;
    }

    @Override
    public SinkWriter<T> createWriter(WriterInitContext context) throws IOException {
        return new Writer<>(options, serializer, context);
    }

    /** One channel to the sidecar; all methods run in the task's mailbox thread. */
    static final class Writer<T> implements SinkWriter<T> {
        private static final Logger LOG = LoggerFactory.getLogger(SluiceSink.class);

        private final Options options;
        private final RecordSerializer<T> serializer;
        private final String channelId;
        private final ProcessingTimeService timers;

        private SocketChannel socket;
        private OutputStream out;
        private InputStream in;
        private final List<byte[]> pending = new ArrayList<>();
        private long lastWatermark = Long.MIN_VALUE;
        private long nextSeq = 1;
        /** Records sent since the last FlushAck: what a broken connection would leave unconfirmed. */
        private long unacked;
        private long lastActivity;
        private boolean idleSent;
        private ScheduledFuture<?> timer;

        Writer(Options options, RecordSerializer<T> serializer, WriterInitContext context)
                throws IOException {
            this.options = options;
            this.serializer = serializer;
            this.channelId = Integer.toString(context.getTaskInfo().getIndexOfThisSubtask());
            this.timers = context.getProcessingTimeService();
            LOG.info(
                    "sluice sink channel {} of {}/{} (attempt {}, restored checkpoint {})",
                    channelId,
                    options.pipeline,
                    options.deployment,
                    context.getTaskInfo().getAttemptNumber(),
                    context.getRestoredCheckpointId());
            connect();
            lastActivity = timers.getCurrentProcessingTime();
            schedule();
        }

        /** Connects, retrying while the sidecar is not listening, and says Hello. */
        private void connect() throws IOException {
            long deadline = System.currentTimeMillis() + options.connectTimeoutMs;
            long backoff = 50;
            while (true) {
                try {
                    SocketChannel ch = SocketChannel.open(UnixDomainSocketAddress.of(Path.of(options.socket)));
                    socket = ch;
                    out = new BufferedOutputStream(Channels.newOutputStream(ch), 1 << 16);
                    in = new BufferedInputStream(Channels.newInputStream(ch), 1 << 12);
                    out.write(Frames.hello(options.pipeline, options.deployment, channelId));
                    out.flush();
                    LOG.info("sluice sink channel {} connected to {}", channelId, options.socket);
                    return;
                } catch (IOException e) {
                    closeQuietly();
                    if (System.currentTimeMillis() > deadline) {
                        throw new IOException("cannot connect to the sluice sidecar at " + options.socket, e);
                    }
                    try {
                        Thread.sleep(backoff);
                    } catch (InterruptedException ie) {
                        Thread.currentThread().interrupt();
                        throw new IOException("interrupted while connecting", ie);
                    }
                    backoff = Math.min(backoff * 2, 1_000);
                }
            }
        }

        @Override
        public void write(T element, Context context) throws IOException {
            Long ts = context.timestamp();
            if (ts == null) {
                throw new IOException("record without event time: the gate cannot place it against the barrier;"
                        + " assign timestamps with a WatermarkStrategy before the sluice sink");
            }
            pending.add(Frames.record(serializer.toRecord(element, ts)));
            activity();
            if (pending.size() >= options.maxBatch) {
                sendPending();
            }
        }

        @Override
        public void writeWatermark(Watermark watermark) throws IOException {
            long wm = watermark.getTimestamp();
            if (wm <= lastWatermark) {
                return;
            }
            sendPending(); // records before the watermark go first
            send(Frames.watermark(wm));
            out.flush();
            lastWatermark = wm;
            activity();
        }

        @Override
        public void flush(boolean endOfInput) throws IOException {
            sendPending();
            long seq = nextSeq++;
            send(Frames.flush(seq));
            out.flush();
            try {
                // The sidecar answers Flushes in order, or sends one Error and closes. The read
                // blocks; a sidecar that never answers holds the checkpoint until Flink's
                // checkpoint timeout fails the job, which interrupts (and closes) this channel.
                while (true) {
                    Frames.ServerFrame f = Frames.readServerFrame(in, options.maxServerFrame);
                    if (!f.isFlushAck()) {
                        throw new IOException("sluice sidecar closed channel " + channelId + ": "
                                + f.errorName() + " " + f.errorMessage());
                    }
                    if (f.seq() == seq) {
                        unacked = 0;
                        LOG.debug("channel {} flush {} acked: admitted {}, dropped {}",
                                channelId, seq, f.admitted(), f.dropped());
                        return;
                    }
                }
            } catch (IOException e) {
                closeQuietly();
                throw e;
            }
        }

        private void sendPending() throws IOException {
            if (pending.isEmpty()) {
                return;
            }
            send(Frames.records(pending));
            unacked += pending.size();
            pending.clear();
        }

        private void send(byte[] frame) throws IOException {
            if (socket == null) {
                throw new IOException("channel " + channelId + " to the sluice sidecar is closed");
            }
            try {
                out.write(frame);
            } catch (IOException e) {
                closeQuietly();
                throw new IOException("lost the sluice sidecar (" + unacked
                        + " records unacknowledged; Flink replays them from the last checkpoint)", e);
            }
        }

        private void activity() {
            lastActivity = timers.getCurrentProcessingTime();
            idleSent = false;
        }

        /** Linger and idleness, on a processing-time timer (runs in the mailbox thread). */
        private void schedule() {
            timer = timers.registerTimer(
                    timers.getCurrentProcessingTime() + options.lingerMs, now -> onTimer(now));
        }

        private void onTimer(long now) throws IOException {
            if (socket == null) {
                return;
            }
            if (!pending.isEmpty()) {
                sendPending();
                out.flush();
            } else if (options.idleAfterMs > 0 && !idleSent && now - lastActivity >= options.idleAfterMs) {
                send(Frames.idle());
                out.flush();
                idleSent = true;
                LOG.info("sluice sink channel {} idle for {} ms: sent Idle", channelId, now - lastActivity);
            }
            schedule();
        }

        private void closeQuietly() {
            try {
                if (socket != null) {
                    socket.close();
                }
            } catch (IOException ignored) {
                // closing anyway
            }
            socket = null;
        }

        @Override
        public void close() {
            if (timer != null) {
                timer.cancel(false);
            }
            closeQuietly();
        }
    }
}
