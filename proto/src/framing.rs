//! The local-socket framing: a varint length prefix, then that many bytes of protobuf — the
//! format of Java's `writeDelimitedTo` / `parseDelimitedFrom`.
//!
//! [`FrameCodec`] is a `tokio_util` codec that decodes messages of type `D` and encodes `E`,
//! refusing frames longer than a limit *before* buffering them. The sidecar uses
//! `FrameCodec<ServerFrame, ClientFrame>`; a client uses `FrameCodec<ClientFrame, ServerFrame>`.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The length prefix is not a valid varint (more than 10 bytes, or overflow).
    #[error("invalid length prefix")]
    BadLength,
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit.
        max: usize,
    },
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("frame is not a valid message: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// The underlying socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes `D`s and encodes `E`s, each varint-length-delimited.
#[derive(Debug)]
pub struct FrameCodec<E, D> {
    max: usize,
    _types: PhantomData<fn(E) -> D>,
}

impl<E, D> FrameCodec<E, D> {
    /// A codec refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            _types: PhantomData,
        }
    }
}

impl<E, D> Default for FrameCodec<E, D> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

/// Reads a varint prefix from `buf` without consuming it: `Ok(None)` when more bytes are needed,
/// otherwise `(value, prefix_len)`.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().take(10).enumerate() {
        let low = u64::from(b & 0x7f);
        if i == 9 && *b > 1 {
            return Err(FrameError::BadLength);
        }
        value |= low << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

impl<E, D: Message + Default> Decoder for FrameCodec<E, D> {
    type Item = D;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, FrameError> {
        let Some((len, prefix)) = peek_varint(src)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        let len = len as usize;
        if src.len() < prefix + len {
            src.reserve(prefix + len - src.len());
            return Ok(None);
        }
        src.advance(prefix);
        let frame = src.split_to(len);
        D::decode(frame.freeze())
            .map(Some)
            .map_err(FrameError::Decode)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<D>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl<E: Message, D> Encoder<E> for FrameCodec<E, D> {
    type Error = FrameError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = item.encoded_len();
        if len > self.max {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        dst.reserve(len + 10);
        item.encode_length_delimited(dst)
            .expect("buffer reserved for the whole frame");
        Ok(())
    }
}

/// Encodes one message with its varint length prefix (for clients that write raw bytes).
pub fn encode_frame(msg: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.encoded_len() + 10);
    msg.encode_length_delimited(&mut out)
        .expect("a Vec grows as needed");
    out
}

/// Appends one length-delimited message to a buffer.
pub fn put_frame(msg: &impl Message, dst: &mut impl BufMut) {
    msg.encode_length_delimited(dst)
        .expect("caller provides a growable buffer");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ClientFrame, Hello, client_frame::Kind};

    fn hello() -> ClientFrame {
        ClientFrame {
            kind: Some(Kind::Hello(Hello {
                pipeline: "payments/fraud".into(),
                deployment: "v1".into(),
                channel_id: "0".into(),
                protocol_version: 1,
            })),
        }
    }

    type Server = FrameCodec<crate::v1::ServerFrame, ClientFrame>;

    #[test]
    fn round_trips_byte_by_byte() {
        let bytes = [encode_frame(&hello()), encode_frame(&hello())].concat();
        let mut codec = Server::default();
        let mut buf = BytesMut::new();
        let mut got = vec![];
        for b in bytes {
            buf.put_u8(b);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![hello(), hello()]);
    }

    #[test]
    fn refuses_oversized_frames_before_buffering_them() {
        let mut codec = Server::new(8);
        let mut buf = BytesMut::new();
        // Prefix announcing 1 MiB, with no body yet.
        prost::encoding::encode_varint(1 << 20, &mut buf);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 1_048_576,
                max: 8
            })
        ));
    }

    #[test]
    fn reports_truncation_at_eof_and_garbage_as_decode_errors() {
        let bytes = encode_frame(&hello());
        let mut codec = Server::default();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 2]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { .. })
        ));
        let mut garbage = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut garbage),
            Err(FrameError::Decode(_))
        ));
        let mut bad_len = BytesMut::from(&[0xffu8; 11][..]);
        assert!(matches!(
            codec.decode(&mut bad_len),
            Err(FrameError::BadLength)
        ));
    }

    #[test]
    fn matches_prost_length_delimiter() {
        proptest::proptest!(|(n in 0u64..u64::MAX)| {
            let mut buf = BytesMut::new();
            prost::encoding::encode_varint(n, &mut buf);
            let (v, used) = peek_varint(&buf).unwrap().unwrap();
            proptest::prop_assert_eq!((v, used), (n, buf.len()));
        });
    }
}
