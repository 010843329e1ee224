package dev.sluice.flink.job;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import dev.sluice.flink.Frames;
import dev.sluice.flink.SluiceSink;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * The test job: {@link PacedSource} (4 partitions, out-of-order event times, partition 0 idle for a
 * while) → keyBy(key) → {@link RunningCount} (ValueState) → {@link SluiceSink}.
 *
 * <pre>
 * java -cp CLASSES:FLINK_LIB/* dev.sluice.flink.job.CutoverJob --pipeline P --deployment D
 *     --socket S --parallelism N --records N --rate R --live-start-ms MS --idle-from I --idle-to J
 *     [--rest-port PORT]       run in a local mini-cluster, REST API on 127.0.0.1:PORT, until done
 *     [--submit HOST:PORT]     submit to a running (standalone) cluster and exit
 *     [--checkpoint-dir URI]   checkpoint storage (default: the JobManager's memory)
 * </pre>
 */
public final class CutoverJob {
    public static void main(String[] args) throws Exception {
        Map<String, String> a = args(args);
        Sequence seq = sequence(a);
        int parallelism = Integer.parseInt(req(a, "parallelism"));
        StreamExecutionEnvironment env = environment(a, parallelism);

        SluiceSink.Options sink = new SluiceSink.Options();
        sink.socket = req(a, "socket");
        sink.pipeline = req(a, "pipeline");
        sink.deployment = req(a, "deployment");

        events(env, seq, Long.parseLong(req(a, "live-start-ms")))
                .sinkTo(new SluiceSink<Event>(sink, CutoverJob::toRecord))
                .uid("sluice-sink")
                .name("sluice-sink");
        execute(env, a, "sluice-cutover-" + sink.deployment);
    }

    /** {@code --key value} pairs. */
    static Map<String, String> args(String[] args) {
        Map<String, String> a = new HashMap<>();
        for (int k = 0; k + 1 < args.length; k += 2) {
            if (!args[k].startsWith("--")) throw new IllegalArgumentException("bad argument " + args[k]);
            a.put(args[k].substring(2), args[k + 1]);
        }
        return a;
    }

    /** The input sequence the arguments describe. */
    static Sequence sequence(Map<String, String> a) {
        Sequence seq = new Sequence();
        seq.records = Long.parseLong(req(a, "records"));
        seq.rate = Long.parseLong(req(a, "rate"));
        seq.idleFrom = Long.parseLong(a.getOrDefault("idle-from", "0"));
        seq.idleTo = Long.parseLong(a.getOrDefault("idle-to", "0"));
        return seq;
    }

    /**
     * A mini-cluster with every listener on loopback, or a remote environment for
     * {@code --submit}; checkpoints every {@code --checkpoint-interval} (1 s), exactly once.
     */
    static StreamExecutionEnvironment environment(Map<String, String> a, int parallelism) {
        Configuration conf = new Configuration();
        conf.setString("execution.checkpointing.interval", a.getOrDefault("checkpoint-interval", "1 s"));
        conf.setString("execution.checkpointing.mode", "EXACTLY_ONCE");
        conf.setString("restart-strategy.type", "fixed-delay");
        conf.setString("restart-strategy.fixed-delay.attempts", "20");
        conf.setString("restart-strategy.fixed-delay.delay", "1 s");
        conf.setString("pipeline.auto-watermark-interval", "100 ms");
        conf.setString("execution.buffer-timeout.interval", "20 ms");
        // The REST API's watermarks come from the metric fetcher (10 s by default): a sidecar
        // following the job (--flink-rest) wants them fresh.
        conf.setString("metrics.fetcher.update-interval", a.getOrDefault("metrics-fetch-interval", "500 ms"));
        // ... and checkpoint statistics are cached for this long (3 s by default).
        conf.setString("web.refresh-interval", a.getOrDefault("web-refresh-interval", "500 ms"));
        if (a.containsKey("checkpoint-dir")) {
            conf.setString("execution.checkpointing.dir", a.get("checkpoint-dir"));
        }
        StreamExecutionEnvironment env;
        String submit = a.get("submit");
        if (submit != null) {
            String[] hp = submit.split(":");
            env = StreamExecutionEnvironment.createRemoteEnvironment(hp[0], Integer.parseInt(hp[1]), conf);
        } else {
            // Every listener of the mini-cluster on loopback.
            for (String k : List.of("rest.bind-address", "rest.address", "jobmanager.bind-host",
                    "jobmanager.rpc.address", "taskmanager.bind-host", "taskmanager.host")) {
                conf.setString(k, "127.0.0.1");
            }
            conf.setString("rest.port", a.getOrDefault("rest-port", "0"));
            conf.setString("taskmanager.numberOfTaskSlots", a.getOrDefault("slots", Integer.toString(parallelism)));
            env = StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        }
        env.setParallelism(parallelism);
        return env;
    }

    /** The job up to its sink: the paced source, its watermarks, the keyed running count. */
    static DataStream<Event> events(StreamExecutionEnvironment env, Sequence seq, long liveStart) {
        WatermarkStrategy<Event> watermarks = WatermarkStrategy
                .<Event>forBoundedOutOfOrderness(Duration.ofMillis(5 * seq.jitterMs))
                .withTimestampAssigner((e, ts) -> e.eventTime)
                .withIdleness(Duration.ofSeconds(2));
        return env.fromSource(new PacedSource(seq, liveStart), watermarks, "paced-source")
                .uid("source")
                .keyBy(e -> e.key)
                .process(new RunningCount())
                .uid("running-count");
    }

    /** Runs to the end, or submits and prints {@code JOB_ID <id>} with {@code --submit}. */
    static void execute(StreamExecutionEnvironment env, Map<String, String> a, String name) throws Exception {
        if (a.get("submit") != null) {
            JobClient job = env.executeAsync(name);
            System.out.println("JOB_ID " + job.getJobID());
            System.exit(0);
        }
        env.execute(name);
    }

    static Frames.Record toRecord(Event e, long eventTimeMs) {
        return new Frames.Record(
                e.key.getBytes(StandardCharsets.UTF_8),
                e.value().getBytes(StandardCharsets.UTF_8),
                List.of(
                        new Frames.Header("attempt", Integer.toString(e.attempt).getBytes(StandardCharsets.UTF_8)),
                        new Frames.Header("after_checkpoint",
                                Long.toString(e.afterCheckpoint).getBytes(StandardCharsets.UTF_8))),
                eventTimeMs,
                "",
                null);
    }

    static String req(Map<String, String> a, String k) {
        String v = a.get(k);
        if (v == null) throw new IllegalArgumentException("--" + k + " is required");
        return v;
    }
}
