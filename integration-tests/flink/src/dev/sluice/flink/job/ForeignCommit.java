package dev.sluice.flink.job;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.flink.api.connector.sink2.Committer;
import org.apache.flink.connector.kafka.sink.KafkaCommittable;
import org.apache.flink.connector.kafka.sink.internal.FlinkKafkaInternalProducer;
import org.apache.flink.connector.kafka.sink.internal.KafkaCommitter;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * A Kafka transaction written on one TaskManager and committed on another, with the Flink Kafka
 * connector's own classes: the writer side is the {@link FlinkKafkaInternalProducer} a
 * {@code KafkaWriter} uses (a transactional id, records sent and flushed, the transaction left
 * open: pre-committed), the commit is Flink's {@link KafkaCommitter} given only the committable
 * (producer id, epoch, transactional id, no producer) — what the committer does when the writer's
 * producer is not in its JVM (another TaskManager, or after a restore). Each side has its own
 * {@code bootstrap.servers}: two pods' sidecars.
 *
 * <pre>
 * java -cp ... dev.sluice.flink.job.ForeignCommit --writer-bootstrap A --committer-bootstrap B
 *     --topic T --transactional-id ID --records N --first-ms MS --go-file PATH
 * </pre>
 *
 * Prints {@code PRECOMMITTED producerId epoch} once the records are flushed, waits for
 * {@code --go-file} to exist, commits, prints {@code COMMITTED} and exits without closing the
 * writer (it would still be running on its TaskManager). Record {@code i} has key
 * {@code k(i % 8)}, value {@code foreign-i}, timestamp {@code first-ms + i}.
 */
public final class ForeignCommit {
    public static void main(String[] args) throws Exception {
        Map<String, String> a = CutoverJob.args(args);
        String txnId = CutoverJob.req(a, "transactional-id");
        String topic = CutoverJob.req(a, "topic");
        int records = Integer.parseInt(CutoverJob.req(a, "records"));
        long first = Long.parseLong(CutoverJob.req(a, "first-ms"));
        Path go = Path.of(CutoverJob.req(a, "go-file"));

        Properties writerProps = properties(CutoverJob.req(a, "writer-bootstrap"));
        FlinkKafkaInternalProducer<byte[], byte[]> writer = new FlinkKafkaInternalProducer<>(writerProps, txnId);
        writer.initTransactions();
        writer.beginTransaction();
        for (int i = 0; i < records; i++) {
            writer.send(
                    new ProducerRecord<>(
                            topic,
                            null,
                            first + i,
                            ("k" + (i % 8)).getBytes(StandardCharsets.UTF_8),
                            ("foreign-" + i).getBytes(StandardCharsets.UTF_8)),
                    null);
        }
        writer.flush();
        KafkaCommittable committable =
                new KafkaCommittable(writer.getProducerId(), writer.getEpoch(), txnId, null);
        System.out.println("PRECOMMITTED " + writer.getProducerId() + " " + writer.getEpoch());
        System.out.flush();

        while (!Files.exists(go)) {
            Thread.sleep(50);
        }
        Properties committerProps = properties(CutoverJob.req(a, "committer-bootstrap"));
        String prefix = txnId.substring(0, txnId.lastIndexOf('-'));
        try (KafkaCommitter committer =
                new KafkaCommitter(committerProps, prefix, 0, 0, false, FlinkKafkaInternalProducer::new)) {
            Request request = new Request(committable);
            committer.commit(List.of(request));
            if (request.outcome != null) {
                System.out.println("FAILED " + request.outcome);
                System.exit(1);
            }
        }
        System.out.println("COMMITTED");
        System.out.flush();
        System.exit(0);
    }

    private static Properties properties(String bootstrap) {
        Properties p = new Properties();
        p.setProperty("bootstrap.servers", bootstrap);
        p.setProperty("key.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        p.setProperty("value.serializer", "org.apache.kafka.common.serialization.ByteArraySerializer");
        p.setProperty("transaction.timeout.ms", "120000");
        p.setProperty("enable.idempotence", "true");
        p.setProperty("acks", "all");
        return p;
    }

    /** One commit request, as Flink's committer operator hands it over; remembers a failure. */
    private static final class Request implements Committer.CommitRequest<KafkaCommittable> {
        private final KafkaCommittable committable;
        String outcome;

        Request(KafkaCommittable committable) {
            this.committable = committable;
        }

        @Override
        public KafkaCommittable getCommittable() {
            return committable;
        }

        @Override
        public int getNumberOfRetries() {
            return 0;
        }

        @Override
        public void signalFailedWithKnownReason(Throwable t) {
            outcome = "known reason: " + t;
        }

        @Override
        public void signalFailedWithUnknownReason(Throwable t) {
            outcome = "unknown reason: " + t;
        }

        @Override
        public void retryLater() {
            outcome = "retry later";
        }

        @Override
        public void updateAndRetryLater(KafkaCommittable committable) {
            outcome = "update and retry later";
        }

        @Override
        public void signalAlreadyCommitted() {
            outcome = "already committed";
        }
    }
}
