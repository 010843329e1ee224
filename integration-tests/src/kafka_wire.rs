//! A Kafka wire-protocol client by hand (kafka-protocol): for the front's tests that need what
//! no real client does on purpose — a connection cut after a request went out, a batch retried
//! with the same sequence, bad bytes.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// One connection.
pub struct Wire {
    stream: TcpStream,
    correlation: i32,
}

impl Wire {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr)
                .await
                .with_context(|| format!("connect {addr}"))?,
            correlation: 0,
        })
    }

    /// Writes raw bytes.
    pub async fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Sends a request without reading its answer.
    pub async fn send<T: Encodable>(&mut self, api: ApiKey, version: i16, body: &T) -> Result<()> {
        self.send_versioned(api, version, version, body).await
    }

    /// Sends a request whose header says `version` and whose body is encoded at `body_version`
    /// (a client newer than the library: ApiVersions at a version nobody knows yet).
    pub async fn send_versioned<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body_version: i16,
        body: &T,
    ) -> Result<()> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("sluice-wire-test")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, api.request_header_version(version))?;
        body.encode(&mut buf, body_version)?;
        let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.raw(&frame).await
    }

    /// Reads one response frame; `None` when the peer closed the connection.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>> {
        let mut size = [0u8; 4];
        match self.stream.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).await?;
        Ok(Some(Bytes::from(body)))
    }

    /// Sends a request and decodes its answer at the same version.
    pub async fn call<T: Encodable, R: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> Result<R> {
        self.send(api, version, body).await?;
        let Some(mut frame) = self.read_frame().await? else {
            bail!("{api:?}: the connection closed without an answer");
        };
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))?;
        if header.correlation_id != self.correlation {
            bail!(
                "{api:?}: answer to {} for {}",
                header.correlation_id,
                self.correlation
            );
        }
        R::decode(&mut frame, version)
    }

    /// Whether the peer has closed the connection (reads until EOF or a short wait passes).
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// One record batch v2 of `(key, value, event time)` records from producer `pid`/`epoch`,
/// sequences from `base_sequence` (`-1`: no idempotence).
pub fn batch(
    pid: i64,
    epoch: i16,
    base_sequence: i32,
    records: &[(&str, &str, i64)],
    compression: Compression,
) -> Result<Bytes> {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v, ts))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp: *ts,
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: IndexMap::new(),
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
    )?;
    Ok(out.freeze())
}
