package dev.sluice.kafka;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Produces records 0..n-1 to a topic as a job's sink would: record i is sent at (and stamped
 * with, as CreateTime) start + i * span / n ms, keyed "k{i % 50}", valued "order-{i}", with
 * headers dep=DEPLOYMENT and seq=i. The producer is the stock KafkaProducer with its defaults
 * (idempotent, acks=all); only bootstrap.servers points at the sluice sidecar.
 *
 * <p>Usage: FrontProducer BOOTSTRAP TOPIC DEPLOYMENT START_MS N SPAN_MS COMPRESSION
 */
public final class FrontProducer {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        String deployment = args[2];
        long start = Long.parseLong(args[3]);
        int n = Integer.parseInt(args[4]);
        long span = Long.parseLong(args[5]);
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, args[6]);
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        List<Future<RecordMetadata>> pending = new ArrayList<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            for (int i = 0; i < n; i++) {
                long ts = start + (long) i * span / n;
                long wait = ts - System.currentTimeMillis();
                if (wait > 0) {
                    Thread.sleep(wait);
                }
                ProducerRecord<String, String> r =
                        new ProducerRecord<>(topic, null, ts, "k" + (i % 50), "order-" + i);
                r.headers().add("dep", deployment.getBytes(StandardCharsets.UTF_8));
                r.headers().add("seq", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                pending.add(producer.send(r));
                if (pending.size() >= 500) {
                    for (Future<RecordMetadata> f : pending) {
                        f.get();
                    }
                    pending.clear();
                }
            }
            for (Future<RecordMetadata> f : pending) {
                f.get();
            }
            producer.flush();
        }
        System.out.println("sent " + n);
    }
}
