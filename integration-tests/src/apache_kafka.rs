//! A real Apache Kafka broker for the tests: single-node KRaft (broker and controller in one
//! JVM), the `kafka_2.13` jars from Maven Central (`scripts/kafka-broker.sh`, cached), every
//! listener on 127.0.0.1. Unlike tansu it implements transactions, SASL and TLS, so the Kafka
//! front's upstream security and (next) exactly-once are checked against Kafka itself.
//!
//! Listeners: `PLAINTEXT` (what the tests themselves use to create topics and read back) and,
//! with [`Secured`], `SASL_SSL` with a certificate signed by a CA made at start (PEM files in the
//! broker's folder) and users for PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use crate::procs::{Proc, free_port, wait_for_tcp};

/// The user the secured listener knows, for every mechanism.
pub const USER: &str = "sluice-front";
/// That user's password.
pub const PASSWORD: &str = "front-secret-7";

/// The classpath of the broker, installed by `scripts/kafka-broker.sh` into the cache.
pub fn classpath() -> Result<String> {
    crate::procs::install_script("kafka-broker.sh", "installing Apache Kafka")
}

/// The secured listener's address and what a client needs to trust it.
#[derive(Debug, Clone)]
pub struct Secured {
    /// `127.0.0.1:PORT` of the `SASL_SSL` listener.
    pub bootstrap: String,
    /// The CA certificate (PEM) that signed the broker's certificate.
    pub ca: PathBuf,
}

/// A running broker; killed when dropped.
pub struct ApacheKafka {
    proc: Option<Proc>,
    dir: PathBuf,
    classpath: String,
    /// `127.0.0.1:PORT` of the `PLAINTEXT` listener.
    pub bootstrap: String,
    /// The `SASL_SSL` listener, when asked for.
    pub secured: Option<Secured>,
}

impl ApacheKafka {
    /// Formats a fresh log folder under `dir` and starts the broker; `secured` adds the
    /// `SASL_SSL` listener. Waits until it accepts connections.
    pub fn start(dir: &Path, secured: bool) -> Result<Self> {
        Self::start_with(dir, secured, "")
    }

    /// [`ApacheKafka::start`] with more broker properties (`name=value` lines).
    pub fn start_with(dir: &Path, secured: bool, more_properties: &str) -> Result<Self> {
        let classpath = classpath()?;
        let dir = dir.join("kafka");
        std::fs::create_dir_all(&dir)?;
        let plain = free_port()?;
        let controller = free_port()?;
        let mut listeners = vec![
            format!("PLAINTEXT://127.0.0.1:{plain}"),
            format!("CONTROLLER://127.0.0.1:{controller}"),
        ];
        let mut advertised = vec![format!("PLAINTEXT://127.0.0.1:{plain}")];
        let mut map = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned();
        let mut extra = String::new();
        let mut sasl = None;
        if secured {
            let port = free_port()?;
            listeners.push(format!("SASL_SSL://127.0.0.1:{port}"));
            advertised.push(format!("SASL_SSL://127.0.0.1:{port}"));
            map.push_str(",SASL_SSL:SASL_SSL");
            let (ca, keystore) = pki(&dir)?;
            let l = "listener.name.sasl_ssl";
            extra = format!(
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
                 {l}.ssl.keystore.type=PEM\n\
                 {l}.ssl.keystore.location={keystore}\n\
                 {l}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}=\"{PASSWORD}\";\n\
                 {l}.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 {l}.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n",
                keystore = keystore.display(),
            );
            sasl = Some(Secured {
                bootstrap: format!("127.0.0.1:{port}"),
                ca,
            });
        }
        // No time retention: the tests' records carry event times from 2023 as timestamps, and a
        // transaction marker (stamped now) rolls the segment, which the default 7-day retention
        // then deletes with every committed record in it (seen: blue's first transactions gone).
        let properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n\
             listeners={listeners}\n\
             advertised.listeners={advertised}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map={map}\n\
             log.dirs={logs}\n\
             num.partitions=1\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\n\
             group.initial.rebalance.delay.ms=0\n\
             log.retention.ms=-1\n\
             {extra}{more_properties}\n",
            listeners = listeners.join(","),
            advertised = advertised.join(","),
            logs = dir.join("data").display(),
        );
        std::fs::write(dir.join("server.properties"), properties)?;
        std::fs::write(
            dir.join("log4j2.yaml"),
            "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n        \
             Pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Root:\n      level: WARN\n      \
             AppenderRef:\n        - ref: STDOUT\n    Logger:\n      - name: kafka.server.KafkaRaftServer\n        \
             level: INFO\n",
        )?;
        let mut format = vec![
            "format".to_owned(),
            "--standalone".into(),
            "--cluster-id".into(),
            "c2x1aWNlLXRlc3QtY2x1c3Rlcg".into(),
            "--config".into(),
            dir.join("server.properties").display().to_string(),
        ];
        if secured {
            for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
                format.push("--add-scram".into());
                format.push(format!("{mechanism}=[name={USER},password={PASSWORD}]"));
            }
        }
        let out = java(&classpath, &dir)
            .arg("kafka.tools.StorageTool")
            .args(&format)
            .output()
            .context("cannot run java (kafka-storage format)")?;
        if !out.status.success() {
            bail!(
                "kafka-storage format failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut broker = Self {
            proc: None,
            dir,
            classpath,
            bootstrap: format!("127.0.0.1:{plain}"),
            secured: sasl,
        };
        broker.restart()?;
        Ok(broker)
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::id)
    }

    /// `kill -9`s the broker (its log folder stays).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the broker again on the same folder and ports (after [`ApacheKafka::kill`]),
    /// waiting until every listener accepts connections.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let script = self.dir.join("run.sh");
        std::fs::write(
            &script,
            format!(
                "exec java -Xms256m -Xmx768m -XX:+UseSerialGC -Dlog4j2.configurationFile={log4j} \
                 -cp '{cp}' kafka.Kafka {props}\n",
                log4j = self.dir.join("log4j2.yaml").display(),
                cp = self.classpath,
                props = self.dir.join("server.properties").display(),
            ),
        )?;
        let proc = Proc::spawn(
            "kafka",
            Path::new("/bin/sh"),
            &[script.display().to_string()],
            &self.dir.join("kafka.log"),
        )?;
        self.proc = Some(proc);
        let mut addresses = vec![self.bootstrap.clone()];
        addresses.extend(self.secured.iter().map(|s| s.bootstrap.clone()));
        for a in addresses {
            wait_for_tcp(a.parse()?, Duration::from_secs(60)).with_context(|| {
                format!(
                    "Apache Kafka did not start; see {}",
                    self.dir.join("kafka.log").display()
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        self.kill();
    }
}

fn java(classpath: &str, dir: &Path) -> Command {
    let mut c = Command::new("java");
    c.arg(format!(
        "-Dlog4j2.configurationFile={}",
        dir.join("log4j2.yaml").display()
    ))
    .arg("-cp")
    .arg(classpath);
    c
}

/// A CA (`ca.pem`) and the broker's PEM keystore (`broker.pem`: its unencrypted PKCS#8 key and
/// its certificate for 127.0.0.1, signed by the CA).
fn pki(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test Kafka CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    let cert = params.signed_by(&key, &ca)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    let keystore = dir.join("broker.pem");
    std::fs::write(&keystore, format!("{}{}", key.serialize_pem(), cert.pem()))?;
    Ok((ca_file, keystore))
}
