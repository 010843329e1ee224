//! Kafka's framing and headers: size-prefixed frames, request and response headers, and the
//! typed bodies the front needs to look inside (everything else passes as bytes).

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// A frame or header that cannot be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The size prefix announces more than the limit.
    #[error("frame of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A negative size prefix.
    #[error("negative frame size {0}")]
    NegativeSize(i32),
    /// Too short to hold a request header.
    #[error("frame of {0} bytes is too short for a request header")]
    Short(usize),
    /// The API key is not one Kafka defines.
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    /// A header or body does not decode at its version.
    #[error("cannot decode {what} v{version}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// The version it was decoded at.
        version: i16,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A body does not encode (a value out of range for its version).
    #[error("cannot encode {what} v{version}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The version.
        version: i16,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing the connection failed.
    #[error("connection i/o")]
    Io(#[from] std::io::Error),
}

fn decode_err(what: &'static str, version: i16) -> impl FnOnce(anyhow::Error) -> FrameError {
    move |e| FrameError::Decode {
        what,
        version,
        source: e.into(),
    }
}

fn encode_err(what: &'static str, version: i16) -> impl FnOnce(anyhow::Error) -> FrameError {
    move |e| FrameError::Encode {
        what,
        version,
        source: e.into(),
    }
}

/// Size-prefixed frames (a big-endian `i32` length, then that many bytes), bounded.
#[derive(Debug, Clone, Copy)]
pub struct Frames {
    limit: usize,
}

impl Frames {
    /// Frames of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl Decoder for Frames {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let size = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let size = usize::try_from(size).map_err(|_| FrameError::NegativeSize(size))?;
        if size > self.limit {
            return Err(FrameError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(size).freeze()))
    }
}

impl Encoder<Bytes> for Frames {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        let size = i32::try_from(frame.len()).map_err(|_| FrameError::TooLarge {
            size: frame.len(),
            limit: self.limit,
        })?;
        dst.reserve(4 + frame.len());
        dst.put_i32(size);
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// A request frame split into its header and its (still encoded) body.
#[derive(Debug, Clone)]
pub struct Request {
    /// The API.
    pub api: ApiKey,
    /// The decoded header.
    pub header: RequestHeader,
    /// The whole frame, as the client sent it (forwarded unchanged where nothing changes).
    pub frame: Bytes,
    /// The body, after the header.
    pub body: Bytes,
}

impl Request {
    /// Splits a frame; never panics on short or malformed input.
    pub fn parse(frame: Bytes) -> Result<Self, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::Short(frame.len()));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let api = ApiKey::try_from(key).map_err(|()| FrameError::UnknownApi(key))?;
        let mut body = frame.clone();
        let header = RequestHeader::decode(&mut body, api.request_header_version(version))
            .map_err(decode_err("request header", version))?;
        Ok(Self {
            api,
            header,
            frame,
            body,
        })
    }

    /// The request's API version.
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    /// Decodes the body as `T`.
    pub fn decode<T: Decodable>(&self, what: &'static str) -> Result<T, FrameError> {
        T::decode(&mut self.body.clone(), self.version()).map_err(decode_err(what, self.version()))
    }

    /// A new frame with this header and another body.
    pub fn with_body<T: Encodable>(
        &self,
        what: &'static str,
        body: &T,
    ) -> Result<Bytes, FrameError> {
        let version = self.version();
        let mut out = BytesMut::new();
        self.header
            .encode(&mut out, self.api.request_header_version(version))
            .map_err(encode_err("request header", version))?;
        body.encode(&mut out, version)
            .map_err(encode_err(what, version))?;
        Ok(out.freeze())
    }
}

/// Splits a response frame to `request` into its correlation id and body.
pub fn response_body(request: &Request, mut frame: Bytes) -> Result<Bytes, FrameError> {
    let version = request.version();
    let header_version = request.api.response_header_version(version);
    ResponseHeader::decode(&mut frame, header_version)
        .map_err(decode_err("response header", version))?;
    Ok(frame)
}

/// Decodes a response body to `request` as `T`.
pub fn decode_response<T: Decodable>(
    request: &Request,
    what: &'static str,
    mut body: Bytes,
) -> Result<T, FrameError> {
    T::decode(&mut body, request.version()).map_err(decode_err(what, request.version()))
}

/// A response frame to `request` with `body`.
pub fn response<T: Encodable>(
    request: &Request,
    what: &'static str,
    body: &T,
) -> Result<Bytes, FrameError> {
    response_at(request, request.version(), what, body)
}

/// A response frame to `request` encoded at `version` (ApiVersions answers an unsupported
/// version at v0).
pub fn response_at<T: Encodable>(
    request: &Request,
    version: i16,
    what: &'static str,
    body: &T,
) -> Result<Bytes, FrameError> {
    let header_version = request.api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(request.header.correlation_id);
    let mut out = BytesMut::new();
    header
        .encode(&mut out, header_version)
        .map_err(encode_err("response header", version))?;
    body.encode(&mut out, version)
        .map_err(encode_err(what, version))?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;

    #[test]
    fn frames_are_bounded_and_split_at_their_size() {
        let mut codec = Frames::new(10);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 1, 2][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none(), "incomplete");
        buf.extend_from_slice(&[3, 0, 0, 0]);
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap(),
            Bytes::from_static(&[1, 2, 3])
        );
        let mut big = BytesMut::from(&[0u8, 0, 0, 11][..]);
        assert!(matches!(
            codec.decode(&mut big),
            Err(FrameError::TooLarge { size: 11, .. })
        ));
        let mut negative = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut negative),
            Err(FrameError::NegativeSize(-1))
        ));
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        for frame in [
            &[][..],
            &[0, 3][..],
            &[0x7f, 0x7f, 0, 1, 0, 0, 0, 1][..],
            &[0, 3, 0, 9, 0, 0, 0, 1, 0xff, 0xff][..],
            &[0, 3, 0, 12, 0, 0, 0, 1, 0x7f, 0xff, 1][..],
        ] {
            assert!(
                Request::parse(Bytes::copy_from_slice(frame)).is_err(),
                "{frame:?}"
            );
        }
    }

    #[test]
    fn a_request_round_trips_with_a_new_body() {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(9)
            .with_correlation_id(42);
        let mut raw = BytesMut::new();
        header
            .encode(&mut raw, ApiKey::Metadata.request_header_version(9))
            .unwrap();
        MetadataRequest::default().encode(&mut raw, 9).unwrap();
        let req = Request::parse(raw.freeze()).unwrap();
        assert_eq!(
            (req.api, req.version(), req.header.correlation_id),
            (ApiKey::Metadata, 9, 42)
        );
        let body: MetadataRequest = req.decode("metadata").unwrap();
        let again = Request::parse(req.with_body("metadata", &body).unwrap()).unwrap();
        assert_eq!(again.frame, req.frame);
    }
}
