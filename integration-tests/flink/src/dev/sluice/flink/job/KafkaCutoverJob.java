package dev.sluice.flink.job;

import java.nio.charset.StandardCharsets;
import java.util.Map;

import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.Schema;
import org.apache.flink.table.api.Table;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.internals.RecordHeader;

/**
 * The test job of {@link CutoverJob} with Flink's stock Kafka connector as its sink instead of
 * sluice's reference sink: what a user runs unchanged except for {@code bootstrap.servers}, which
 * points at the sidecar's Kafka front.
 *
 * <pre>
 * java -cp CLASSES:LIB/*:FLINK_LIB/* dev.sluice.flink.job.KafkaCutoverJob --sink MODE
 *     --bootstrap HOST:PORT --topic T --deployment D --parallelism N --records N --rate R
 *     --live-start-ms MS [--rest-port PORT] [--checkpoint-dir URI]
 *     [--guarantee at-least-once|none|exactly-once] [--linger-ms MS]
 *
 * MODE  datastream      KafkaSink (AT_LEAST_ONCE, or NONE with --guarantee none: it does not
 *                       flush at checkpoints; --linger-ms keeps records in the producer that
 *                       long, as a busy producer would); the record timestamp is the element's
 *                       timestamp (its event time), as the KafkaSink sets it by default
 *       sql-timestamp   INSERT INTO a 'connector' = 'kafka' table whose writable `timestamp`
 *                       metadata column is set from the event time (sidecar: record-timestamp)
 *       sql-json        the same table without the metadata column: the event time is the JSON
 *                       value's "et" field (sidecar: --event-time json:/et)
 * </pre>
 *
 * Every record carries the headers {@code deployment}, {@code attempt} and
 * {@code after_checkpoint}, so the test can tell who wrote it and what a restart replays.
 */
public final class KafkaCutoverJob {
    public static void main(String[] args) throws Exception {
        Map<String, String> a = CutoverJob.args(args);
        Sequence seq = CutoverJob.sequence(a);
        int parallelism = Integer.parseInt(CutoverJob.req(a, "parallelism"));
        String mode = CutoverJob.req(a, "sink");
        String bootstrap = CutoverJob.req(a, "bootstrap");
        String topic = CutoverJob.req(a, "topic");
        String deployment = CutoverJob.req(a, "deployment");
        StreamExecutionEnvironment env = CutoverJob.environment(a, parallelism);
        DataStream<Event> events = CutoverJob.events(env, seq, Long.parseLong(CutoverJob.req(a, "live-start-ms")));

        switch (mode) {
            case "datastream" -> {
                DeliveryGuarantee guarantee = switch (a.getOrDefault("guarantee", "at-least-once")) {
                    case "at-least-once" -> DeliveryGuarantee.AT_LEAST_ONCE;
                    case "none" -> DeliveryGuarantee.NONE;
                    case "exactly-once" -> DeliveryGuarantee.EXACTLY_ONCE;
                    default -> throw new IllegalArgumentException("--guarantee at-least-once|none|exactly-once");
                };
                var builder = KafkaSink.<Event>builder()
                        .setBootstrapServers(bootstrap)
                        .setDeliveryGuarantee(guarantee)
                        .setRecordSerializer(new Serializer(topic, deployment));
                if (guarantee == DeliveryGuarantee.EXACTLY_ONCE) {
                    // One prefix per deployment: blue's and green's transactions never fence
                    // each other. Below the broker's transaction.max.timeout.ms (15 min).
                    builder.setTransactionalIdPrefix("sluice-" + deployment);
                    builder.setProperty("transaction.timeout.ms", "60000");
                }
                if (a.containsKey("linger-ms")) {
                    builder.setProperty("linger.ms", a.get("linger-ms"));
                    builder.setProperty("batch.size", Integer.toString(4 << 20));
                }
                KafkaSink<Event> sink = builder.build();
                events.sinkTo(sink).uid("kafka-sink").name("kafka-sink");
                CutoverJob.execute(env, a, "sluice-kafka-" + deployment);
            }
            case "sql-timestamp", "sql-json" -> {
                StreamTableEnvironment tables = StreamTableEnvironment.create(env);
                Table t = tables.fromDataStream(events, Schema.newBuilder()
                        .column("index", "BIGINT")
                        .column("partition", "INT")
                        .column("key", "STRING")
                        .column("eventTime", "BIGINT")
                        .column("count", "BIGINT")
                        .column("attempt", "INT")
                        .column("afterCheckpoint", "BIGINT")
                        .build());
                tables.createTemporaryView("events", t);
                boolean metadata = mode.equals("sql-timestamp");
                // What a user writes: an ordinary Kafka table, pointed at the sidecar.
                tables.executeSql("CREATE TABLE out_topic (\n"
                        + "  k STRING,\n"
                        + "  i BIGINT,\n"
                        + "  p INT,\n"
                        + "  n BIGINT,\n"
                        + (metadata ? "" : "  et BIGINT,\n")
                        + (metadata ? "  ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',\n" : "")
                        + "  headers MAP<STRING, BYTES> METADATA\n"
                        + ") WITH (\n"
                        + "  'connector' = 'kafka',\n"
                        + "  'topic' = '" + topic + "',\n"
                        + "  'properties.bootstrap.servers' = '" + bootstrap + "',\n"
                        + "  'key.format' = 'raw',\n"
                        + "  'key.fields' = 'k',\n"
                        + "  'value.format' = 'json',\n"
                        + "  'value.fields-include' = 'EXCEPT_KEY',\n"
                        + "  'sink.delivery-guarantee' = 'at-least-once'\n"
                        + ")");
                String time = metadata ? "TO_TIMESTAMP_LTZ(eventTime, 3)" : "eventTime";
                tables.executeSql("INSERT INTO out_topic SELECT `key`, `index`, `partition`, `count`, "
                        + time + ", MAP['deployment', CAST('" + deployment + "' AS BYTES), "
                        + "'attempt', CAST(CAST(attempt AS STRING) AS BYTES), "
                        + "'after_checkpoint', CAST(CAST(afterCheckpoint AS STRING) AS BYTES)] "
                        + "FROM events").await();
                // The job is done (bounded input): leave like env.execute() does.
                System.exit(0);
            }
            default -> throw new IllegalArgumentException("--sink must be datastream, sql-timestamp or sql-json, not " + mode);
        }
    }

    /** Key, value and headers of {@link CutoverJob}'s records; the timestamp is the event time. */
    static final class Serializer implements KafkaRecordSerializationSchema<Event> {
        private static final long serialVersionUID = 1L;
        private final String topic;
        private final String deployment;

        Serializer(String topic, String deployment) {
            this.topic = topic;
            this.deployment = deployment;
        }

        @Override
        public ProducerRecord<byte[], byte[]> serialize(Event e, KafkaSinkContext ctx, Long timestamp) {
            ProducerRecord<byte[], byte[]> r = new ProducerRecord<>(topic, null, timestamp,
                    e.key.getBytes(StandardCharsets.UTF_8), e.value().getBytes(StandardCharsets.UTF_8));
            r.headers().add(new RecordHeader("deployment", deployment.getBytes(StandardCharsets.UTF_8)));
            r.headers().add(new RecordHeader("attempt", Integer.toString(e.attempt).getBytes(StandardCharsets.UTF_8)));
            r.headers().add(new RecordHeader("after_checkpoint",
                    Long.toString(e.afterCheckpoint).getBytes(StandardCharsets.UTF_8)));
            return r;
        }
    }
}
