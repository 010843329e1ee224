//! A native-frame client: what a Flink sink writer does, in Rust, for tests and the demo.

use std::path::Path;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use sluice_proto::framing::FrameCodec;
use sluice_proto::v1::{
    ClientFrame, Flush, Hello, Records, ServerFrame, Watermark, client_frame, server_frame,
};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

fn hello(pipeline: &str, deployment: &str, channel: &str) -> Hello {
    Hello {
        pipeline: pipeline.into(),
        deployment: deployment.into(),
        channel_id: channel.into(),
        protocol_version: 1,
    }
}

/// The bytes of a `Hello` frame, for tests that write raw (or broken) frames after it.
pub fn hello_frame(pipeline: &str, deployment: &str, channel: &str) -> Vec<u8> {
    sluice_proto::framing::encode_frame(&ClientFrame {
        kind: Some(client_frame::Kind::Hello(hello(
            pipeline, deployment, channel,
        ))),
    })
}

/// One channel to a sidecar.
pub struct Channel {
    io: Framed<UnixStream, FrameCodec<ClientFrame, ServerFrame>>,
    next_seq: u64,
}

/// Counts a sidecar reported in a FlushAck.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acked {
    /// Records of the channel admitted and acknowledged by the sink.
    pub admitted: u64,
    /// Records of the channel dropped.
    pub dropped: u64,
}

impl Channel {
    /// Connects and says hello.
    pub async fn open(
        socket: &Path,
        pipeline: &str,
        deployment: &str,
        channel: &str,
    ) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let mut ch = Self {
            io: Framed::new(stream, FrameCodec::default()),
            next_seq: 1,
        };
        ch.send(client_frame::Kind::Hello(hello(
            pipeline, deployment, channel,
        )))
        .await?;
        Ok(ch)
    }

    /// Says hello a second time: a protocol error, the sidecar closes the channel.
    pub async fn hello_again(&mut self) -> Result<()> {
        self.send(client_frame::Kind::Hello(hello("", "", "")))
            .await?;
        match self.io.next().await {
            Some(Ok(ServerFrame {
                kind: Some(server_frame::Kind::Error(_)),
            })) => Ok(()),
            other => bail!("expected an Error frame, got {other:?}"),
        }
    }

    async fn send(&mut self, kind: client_frame::Kind) -> Result<()> {
        self.io
            .send(ClientFrame { kind: Some(kind) })
            .await
            .context("cannot write to the sidecar")
    }

    /// Sends a batch of records.
    pub async fn records(&mut self, records: Records) -> Result<()> {
        self.send(client_frame::Kind::Records(records)).await
    }

    /// Sends a watermark.
    pub async fn watermark(&mut self, watermark_ms: i64) -> Result<()> {
        self.send(client_frame::Kind::Watermark(Watermark { watermark_ms }))
            .await
    }

    /// Flushes and waits for the FlushAck (every earlier record admitted-and-acked or dropped).
    pub async fn flush(&mut self) -> Result<Acked> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send(client_frame::Kind::Flush(Flush { seq })).await?;
        match self.io.next().await {
            Some(Ok(ServerFrame {
                kind: Some(server_frame::Kind::FlushAck(ack)),
            })) if ack.seq == seq => Ok(Acked {
                admitted: ack.admitted,
                dropped: ack.dropped,
            }),
            Some(Ok(ServerFrame {
                kind: Some(server_frame::Kind::Error(e)),
            })) => bail!("sidecar closed the channel: {:?} {}", e.code(), e.message),
            Some(Ok(other)) => bail!("unexpected frame {other:?}"),
            Some(Err(e)) => Err(e).context("cannot read the FlushAck"),
            None => bail!("sidecar closed the channel without a FlushAck"),
        }
    }
}
