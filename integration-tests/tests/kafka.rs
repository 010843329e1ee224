//! The Kafka sink through a real Kafka-compatible broker (tansu, memory storage, 127.0.0.1): a
//! blue/green cutover of 100,000 records from two real sidecars into one topic with six
//! partitions, read back with a real consumer and counted record by record — every record
//! exactly once, on the right side of the barrier, on the partition the Java client would have
//! chosen (or the one it named), in its channel's order, with headers and its event time as the
//! Kafka timestamp.
//!
//! The same cutover once more into a real Apache Kafka broker (KRaft, Maven Central), the
//! sidecars' Kafka sinks logging in over `SASL_SSL` (SCRAM-SHA-512, the broker's certificate
//! checked against its CA).
//!
//! Needs tansu (`scripts/test.sh` installs it into the cache). Set `SLUICE_SKIP_KAFKA=1` to skip
//! on a machine without it; otherwise a missing broker fails the test with the install command.

use sluice_integration_tests::kafka::{Broker, create_topic};
use sluice_integration_tests::scenario::{self, KafkaOutput, ScenarioConfig};

const PARTITIONS: i32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_into_kafka_is_exact_and_intact() {
    if std::env::var("SLUICE_SKIP_KAFKA").is_ok_and(|v| v == "1") {
        eprintln!("SLUICE_SKIP_KAFKA=1: skipping the Kafka test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path()).expect("start the tansu broker");
    create_topic(&broker.bootstrap, "orders", PARTITIONS)
        .await
        .expect("create the topic");
    let mut cfg = ScenarioConfig::new(dir.path());
    cfg.kafka = Some(KafkaOutput {
        write_via: None,
        bootstrap: broker.bootstrap.clone(),
        topic: "orders".into(),
        partitions: PARTITIONS,
    });
    let report = scenario::run_expecting_exact(&cfg, dir).await;
    let k = report.kafka.as_ref().expect("Kafka findings");
    assert_eq!(report.records, 100_000);
    assert_eq!(k.read, 100_000, "the topic holds exactly the input");
    assert_eq!(report.blue.output + report.green.output, 100_000);
    assert_eq!(
        report.blue.acked_admitted + report.green.acked_admitted,
        100_000,
        "the sidecars' FlushAck counts agree with what Kafka holds"
    );
    assert_eq!(
        k.partitions_used, PARTITIONS as usize,
        "every partition used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_into_apache_kafka_over_sasl_ssl_is_exact_and_intact() {
    use sluice_integration_tests::apache_kafka::{ApacheKafka, PASSWORD, USER};
    let dir = tempfile::tempdir().unwrap();
    let broker = ApacheKafka::start(dir.path(), true).expect("start Apache Kafka");
    let secured = broker.secured.clone().expect("a SASL_SSL listener");
    create_topic(&broker.bootstrap, "orders", PARTITIONS)
        .await
        .expect("create the topic");
    let mut cfg = ScenarioConfig::new(dir.path());
    cfg.kafka = Some(KafkaOutput {
        bootstrap: broker.bootstrap.clone(),
        topic: "orders".into(),
        partitions: PARTITIONS,
        write_via: Some((
            secured.bootstrap.clone(),
            vec![
                "security.protocol=SASL_SSL".into(),
                format!("ssl.ca.location={}", secured.ca.display()),
                "sasl.mechanism=SCRAM-SHA-512".into(),
                format!("sasl.username={USER}"),
                format!("sasl.password={PASSWORD}"),
            ],
        )),
    });
    let report = scenario::run_expecting_exact(&cfg, dir).await;
    let k = report.kafka.as_ref().expect("Kafka findings");
    assert_eq!(k.read, 100_000, "the topic holds exactly the input");
    assert_eq!(
        report.blue.acked_admitted + report.green.acked_admitted,
        100_000,
        "the sidecars' FlushAck counts agree with what Kafka holds"
    );
}
