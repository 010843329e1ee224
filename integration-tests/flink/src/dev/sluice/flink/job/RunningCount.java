package dev.sluice.flink.job;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * The keyed stateful step: a running count per key in ValueState (checkpointed exactly once), so a
 * green job that rebuilt its state and a blue job restored from a checkpoint emit the same record.
 *
 * <p>It also stamps each output with the task attempt and the last checkpoint snapshotted before
 * it (carried to the gate as headers): a record stamped with checkpoint C was processed after
 * barrier C, so it is replayed when the job restores C. The test uses the stamps to check that the
 * duplicates of a restart are exactly those records.
 */
public class RunningCount extends KeyedProcessFunction<String, Event, Event>
        implements CheckpointedFunction {
    private transient ValueState<Long> count;
    private transient int attempt;
    private transient long lastCheckpoint;

    @Override
    public void open(OpenContext ctx) {
        count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Long.class));
        attempt = getRuntimeContext().getTaskInfo().getAttemptNumber();
    }

    @Override
    public void processElement(Event e, Context ctx, Collector<Event> out) throws Exception {
        Long c = count.value();
        long n = (c == null ? 0 : c) + 1;
        count.update(n);
        Event o = new Event();
        o.index = e.index;
        o.partition = e.partition;
        o.key = e.key;
        o.eventTime = e.eventTime;
        o.count = n;
        o.attempt = attempt;
        o.afterCheckpoint = lastCheckpoint;
        out.collect(o);
    }

    @Override
    public void snapshotState(FunctionSnapshotContext ctx) {
        lastCheckpoint = ctx.getCheckpointId();
    }

    @Override
    public void initializeState(FunctionInitializationContext ctx) {
        lastCheckpoint = ctx.getRestoredCheckpointId().orElse(0L);
    }
}
