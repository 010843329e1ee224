package dev.sluice.flink.job;

/** One input record on its way through the job (a Flink POJO). */
public class Event {
    /** Index in the input sequence. */
    public long index;
    public int partition;
    public String key;
    public long eventTime;
    /** Running count of this key, set by the keyed step (1 for the key's first record). */
    public long count;
    /** Task attempt that produced this output (0 until Flink restarts the job). */
    public int attempt;
    /** Last checkpoint the keyed step had snapshotted (or restored) before this record. */
    public long afterCheckpoint;

    public Event() {}

    /** The record value: identical for blue and green, whatever the parallelism or restarts. */
    public String value() {
        return "{\"i\":" + index + ",\"p\":" + partition + ",\"n\":" + count + "}";
    }
}
