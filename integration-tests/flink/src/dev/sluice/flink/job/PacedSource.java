package dev.sluice.flink.job;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceOutput;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.core.io.InputStatus;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * A bounded FLIP-27 source over {@link Sequence} with a fixed number of partitions (splits), like
 * a Kafka topic: each partition is read in index order, its position is checkpointed, and record
 * i is only available from {@code liveStart + offset(i)} on. A deployment started late therefore
 * reads the backlog as fast as it can and then follows the live rate.
 */
public final class PacedSource implements Source<Event, PacedSource.Split, List<PacedSource.Split>> {
    private static final long serialVersionUID = 1L;

    private final Sequence seq;
    private final long liveStartMs;

    public PacedSource(Sequence seq, long liveStartMs) {
        this.seq = seq;
        this.liveStartMs = liveStartMs;
    }

    /** One partition and the index to read next. */
    public static final class Split implements SourceSplit {
        final int partition;
        long next;

        Split(int partition, long next) {
            this.partition = partition;
            this.next = next;
        }

        @Override
        public String splitId() {
            return "p" + partition;
        }
    }

    @Override
    public Boundedness getBoundedness() {
        return Boundedness.BOUNDED;
    }

    @Override
    public SplitEnumerator<Split, List<Split>> createEnumerator(SplitEnumeratorContext<Split> ctx) {
        List<Split> all = new ArrayList<>();
        for (int p = 0; p < seq.partitions; p++) {
            all.add(new Split(p, 0));
        }
        return new Enumerator(ctx, all);
    }

    @Override
    public SplitEnumerator<Split, List<Split>> restoreEnumerator(
            SplitEnumeratorContext<Split> ctx, List<Split> unassigned) {
        return new Enumerator(ctx, unassigned);
    }

    @Override
    public SourceReader<Event, Split> createReader(SourceReaderContext ctx) {
        return new Reader(seq, liveStartMs);
    }

    @Override
    public SimpleVersionedSerializer<Split> getSplitSerializer() {
        return new SplitSerializer();
    }

    @Override
    public SimpleVersionedSerializer<List<Split>> getEnumeratorCheckpointSerializer() {
        return new SplitListSerializer();
    }

    /** Assigns partition p to reader p % parallelism, once. */
    static final class Enumerator implements SplitEnumerator<Split, List<Split>> {
        private final SplitEnumeratorContext<Split> ctx;
        private final List<Split> unassigned;

        Enumerator(SplitEnumeratorContext<Split> ctx, List<Split> unassigned) {
            this.ctx = ctx;
            this.unassigned = new ArrayList<>(unassigned);
        }

        @Override
        public void start() {}

        @Override
        public void handleSplitRequest(int subtask, String host) {}

        @Override
        public void addSplitsBack(List<Split> splits, int subtask) {
            unassigned.addAll(splits); // handed out again when the reader registers again
        }

        @Override
        public void addReader(int subtask) {
            int parallelism = ctx.currentParallelism();
            List<Split> mine = new ArrayList<>();
            unassigned.removeIf(s -> {
                boolean take = s.partition % parallelism == subtask;
                if (take) mine.add(s);
                return take;
            });
            for (Split s : mine) {
                ctx.assignSplit(s, subtask);
            }
            ctx.signalNoMoreSplits(subtask);
        }

        @Override
        public List<Split> snapshotState(long checkpointId) {
            return new ArrayList<>(unassigned);
        }

        @Override
        public void close() {}
    }

    /** Emits the due record with the smallest index among its partitions, or waits for it. */
    static final class Reader implements SourceReader<Event, Split> {
        private static final ScheduledExecutorService TIMER =
                Executors.newSingleThreadScheduledExecutor(r -> {
                    Thread t = new Thread(r, "paced-source-timer");
                    t.setDaemon(true);
                    return t;
                });

        private final Sequence seq;
        private final long liveStartMs;
        private final List<Split> splits = new ArrayList<>();
        private final List<SourceOutput<Event>> outputs = new ArrayList<>();
        private boolean noMoreSplits;
        private CompletableFuture<Void> available = new CompletableFuture<>();

        Reader(Sequence seq, long liveStartMs) {
            this.seq = seq;
            this.liveStartMs = liveStartMs;
        }

        @Override
        public void start() {}

        @Override
        public InputStatus pollNext(ReaderOutput<Event> output) {
            int best = -1;
            for (int k = 0; k < splits.size(); k++) {
                Split s = splits.get(k);
                while (s.next < seq.records && seq.partition(s.next) != s.partition) {
                    s.next++;
                }
                if (s.next >= seq.records) {
                    output.releaseOutputForSplit(s.splitId());
                    splits.remove(k);
                    outputs.remove(k);
                    k--;
                    continue;
                }
                if (outputs.get(k) == null) {
                    outputs.set(k, output.createOutputForSplit(s.splitId()));
                }
                if (best < 0 || s.next < splits.get(best).next) {
                    best = k;
                }
            }
            if (best < 0) {
                return noMoreSplits ? InputStatus.END_OF_INPUT : waitFor(Long.MAX_VALUE);
            }
            Split s = splits.get(best);
            long due = liveStartMs + seq.offsetMs(s.next);
            if (due > System.currentTimeMillis()) {
                return waitFor(due);
            }
            Event e = seq.event(s.next);
            outputs.get(best).collect(e, e.eventTime);
            s.next++;
            return InputStatus.MORE_AVAILABLE;
        }

        private InputStatus waitFor(long dueMs) {
            if (available.isDone()) {
                available = new CompletableFuture<>();
            }
            if (dueMs != Long.MAX_VALUE) {
                CompletableFuture<Void> f = available;
                long delay = Math.max(1, dueMs - System.currentTimeMillis());
                TIMER.schedule(() -> f.complete(null), delay, TimeUnit.MILLISECONDS);
            }
            return InputStatus.NOTHING_AVAILABLE;
        }

        @Override
        public List<Split> snapshotState(long checkpointId) {
            List<Split> state = new ArrayList<>();
            for (Split s : splits) {
                state.add(new Split(s.partition, s.next));
            }
            return state;
        }

        @Override
        public CompletableFuture<Void> isAvailable() {
            return available;
        }

        @Override
        public void addSplits(List<Split> added) {
            for (Split s : added) {
                splits.add(new Split(s.partition, s.next));
                outputs.add(null);
            }
            available.complete(null);
        }

        @Override
        public void notifyNoMoreSplits() {
            noMoreSplits = true;
            available.complete(null);
        }

        @Override
        public void close() {}
    }

    static final class SplitSerializer implements SimpleVersionedSerializer<Split> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(Split s) throws IOException {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(b);
            out.writeInt(s.partition);
            out.writeLong(s.next);
            return b.toByteArray();
        }

        @Override
        public Split deserialize(int version, byte[] bytes) throws IOException {
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes));
            return new Split(in.readInt(), in.readLong());
        }
    }

    static final class SplitListSerializer implements SimpleVersionedSerializer<List<Split>> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(List<Split> splits) throws IOException {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(b);
            out.writeInt(splits.size());
            for (Split s : splits) {
                out.writeInt(s.partition);
                out.writeLong(s.next);
            }
            return b.toByteArray();
        }

        @Override
        public List<Split> deserialize(int version, byte[] bytes) throws IOException {
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes));
            int n = in.readInt();
            List<Split> splits = new ArrayList<>(n);
            for (int k = 0; k < n; k++) {
                splits.add(new Split(in.readInt(), in.readLong()));
            }
            return splits;
        }
    }
}
