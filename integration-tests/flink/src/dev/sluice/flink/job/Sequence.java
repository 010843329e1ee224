package dev.sluice.flink.job;

import java.io.Serializable;

/**
 * The test input: record {@code i} for {@code i in [0, records)}, a pure function of {@code i}, so
 * blue and green (any parallelism, any restart) read the same sequence. The Rust test
 * ({@code integration-tests/src/flink.rs}) computes the same function to count the output.
 *
 * <ul>
 *   <li>offset(i) = i * 1000 / rate ms: record i becomes available ("is produced") at
 *       liveStart + offset(i), and its event time is BASE + offset(i) + jitter(i), jitter in
 *       [-jitter, +jitter]: out of order within 2 * jitter.
 *   <li>partition(i) = i % partitions, except that partition 0 has no records with index in
 *       [idleFrom, idleTo): those go to partition 1. Partition 0 is silent (idle) for that long and
 *       then comes back with current event times.
 *   <li>key(i) = "p{partition}-k{h(i) % keysPerPartition}": every key lives in one partition, so a
 *       key's records reach the keyed step in index order and its running count is deterministic.
 * </ul>
 */
public final class Sequence implements Serializable {
    private static final long serialVersionUID = 1L;

    /** Event time of offset 0 (2023-11-14T22:13:20Z). */
    public static final long BASE_MS = 1_700_000_000_000L;

    public long records;
    public long rate;
    public int partitions = 4;
    public int keysPerPartition = 8;
    public long jitterMs = 100;
    public long idleFrom;
    public long idleTo;

    public long offsetMs(long i) {
        return i * 1000 / rate;
    }

    static long hash(long i) {
        return (i * 0x9E3779B97F4A7C15L) >>> 33;
    }

    public long eventTime(long i) {
        long jitter = hash(i) % (2 * jitterMs + 1) - jitterMs;
        return BASE_MS + offsetMs(i) + jitter;
    }

    public int partition(long i) {
        int p = (int) (i % partitions);
        return p == 0 && i >= idleFrom && i < idleTo ? 1 : p;
    }

    public String key(long i) {
        return "p" + partition(i) + "-k" + ((hash(i) >>> 8) % keysPerPartition);
    }

    public Event event(long i) {
        Event e = new Event();
        e.index = i;
        e.partition = partition(i);
        e.key = key(i);
        e.eventTime = eventTime(i);
        return e;
    }
}
