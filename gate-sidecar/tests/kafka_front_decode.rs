//! The Kafka front's request decoding path (`fuzz_request`, the same entry the cargo fuzz
//! target `fuzz/fuzz_targets/kafka_front_request.rs` drives) on real Produce requests of every
//! served encoding and compression, and on seeded mutations of them: truncations, flipped
//! bytes, counts and lengths set to huge values. Nothing may panic or abort. A smoke run on
//! stable for every test run; `scripts/fuzz.sh` runs the coverage-guided fuzzer.
//! `SLUICE_FUZZ_SEEDS=DIR` writes the unmutated requests there as a seed corpus. Inputs the
//! fuzzer crashed on are kept in `tests/fuzz-regressions/` and replayed here.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::{Encodable as _, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_gate_sidecar::fuzz_request;

fn batch(compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..5)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!(r#"{{"ts": {i}}}"#))),
            headers: IndexMap::from([(
                StrBytes::from_static_str("ts"),
                Some(Bytes::from_static(b"42")),
            )]),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    out.freeze()
}

/// Fuzzer inputs: mode byte (choosing the Produce version) and a real request body.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for version in [3i16, 7, 9, 11] {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(1_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch(compression))),
                        ]),
                ]);
            let mut body = BytesMut::new();
            req.encode(&mut body, version).unwrap();
            // mode % 9 + 3 == version, and mode != 0 (0 means a framed stream).
            let mode = u8::try_from(version - 3).unwrap() + 9;
            let mut input = vec![mode];
            input.extend_from_slice(&body);
            out.push(input);
        }
    }
    out
}

/// xorshift64*: deterministic mutations, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn the_decoding_path_survives_real_requests_and_their_mutations() {
    let seeds = seeds();
    if let Some(dir) = std::env::var_os("SLUICE_FUZZ_SEEDS") {
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("produce-{i}")), s).unwrap();
        }
    }
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let mut runs = 0;
    for seed in &seeds {
        fuzz_request(seed);
        for _ in 0..400 {
            let mut m = seed.clone();
            match rng.below(4) {
                0 => m.truncate(1 + rng.below(m.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = 1 + rng.below(m.len() - 1);
                        m[at] = rng.next() as u8;
                    }
                }
                2 => {
                    // A count or length of up to four bytes set to something huge.
                    let at = 1 + rng.below(m.len().saturating_sub(5));
                    m[at..at + 4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
                }
                _ => {
                    let at = 1 + rng.below(m.len() - 1);
                    m[at] = 0xff;
                    m[at - 1] = 0xff;
                }
            }
            fuzz_request(&m);
            runs += 1;
        }
    }
    // And as framed streams, the mode the real listener sees.
    for seed in &seeds {
        let mut stream = vec![0u8];
        stream.extend_from_slice(&((seed.len() + 9) as i32).to_be_bytes());
        stream.extend_from_slice(&[0, 0, 0, (seed[0] - 9 + 3), 0, 0, 0, 1, 0xff, 0xff]);
        stream.extend_from_slice(&seed[1..]);
        fuzz_request(&stream);
    }
    assert_eq!(runs, seeds.len() * 400);
}

/// Every input the coverage-guided fuzzer ever crashed on, kept as a regression test.
#[test]
fn every_fuzzer_finding_stays_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/kafka_front_request");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let input = std::fs::read(entry.unwrap().path()).unwrap();
        fuzz_request(&input);
        n += 1;
    }
    assert!(n >= 1, "no regression inputs in {}", dir.display());
}
