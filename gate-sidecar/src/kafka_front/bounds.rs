//! Bounds checks before the codec allocates: `kafka-protocol` sizes its vectors from the counts
//! on the wire (`Vec::with_capacity(n)`), so a 20-byte request claiming two billion topics, or
//! a record claiming two billion headers, would make the process abort on allocation — every
//! connection lost for one bad one. These walkers check each count against the bytes that are
//! actually there (every element takes at least one byte) before the real decoder runs.

use bytes::{Buf as _, Bytes};
use kafka_protocol::compression::{Decompressor as _, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::records::Compression;
use thiserror::Error;

/// Where a request or batch claims more than it holds.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("malformed: {0}")]
pub struct OutOfBounds(pub &'static str);

struct Walker {
    buf: Bytes,
}

impl Walker {
    fn u8(&mut self) -> Result<u8, OutOfBounds> {
        (self.buf.remaining() >= 1)
            .then(|| self.buf.get_u8())
            .ok_or(OutOfBounds("truncated"))
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), OutOfBounds> {
        if n > self.buf.remaining() {
            return Err(OutOfBounds(what));
        }
        self.buf.advance(n);
        Ok(())
    }

    fn i16(&mut self) -> Result<i16, OutOfBounds> {
        if self.buf.remaining() < 2 {
            return Err(OutOfBounds("truncated"));
        }
        Ok(self.buf.get_i16())
    }

    fn i32(&mut self) -> Result<i32, OutOfBounds> {
        if self.buf.remaining() < 4 {
            return Err(OutOfBounds("truncated"));
        }
        Ok(self.buf.get_i32())
    }

    // The varints read exactly as kafka-protocol reads them (at most 5 bytes for an int, 10
    // for a long, high bits dropped), or the walk and the decoder would see different fields.

    /// `UnsignedVarInt`.
    fn uvarint(&mut self) -> Result<u64, OutOfBounds> {
        let mut v = 0u32;
        for i in 0..5 {
            let b = u32::from(self.u8()?);
            v |= (b & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(u64::from(v))
    }

    /// `UnsignedVarLong`.
    fn uvarlong(&mut self) -> Result<u64, OutOfBounds> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = u64::from(self.u8()?);
            v |= (b & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(v)
    }

    /// A compact length (unsigned varint of length + 1; 0 is null, -1).
    fn compact_len(&mut self) -> Result<i64, OutOfBounds> {
        Ok(self.uvarint()? as i64 - 1)
    }

    /// `VarInt` (zigzag).
    fn zigzag(&mut self) -> Result<i64, OutOfBounds> {
        let z = self.uvarint()? as u32;
        Ok(i64::from(((z >> 1) as i32) ^ -((z & 1) as i32)))
    }

    /// `VarLong` (zigzag).
    fn zigzag_long(&mut self) -> Result<i64, OutOfBounds> {
        let z = self.uvarlong()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A count of elements of at least `min` bytes each that must fit in what is left.
    fn fits(&self, n: u64, min: u64, what: &'static str) -> Result<u64, OutOfBounds> {
        if n.saturating_mul(min) > self.buf.remaining() as u64 {
            return Err(OutOfBounds(what));
        }
        Ok(n)
    }

    /// A length-prefixed field, `-1` (null) allowed when `nullable`.
    fn skip_len(
        &mut self,
        len: i64,
        nullable: bool,
        what: &'static str,
    ) -> Result<(), OutOfBounds> {
        match len {
            -1 if nullable => Ok(()),
            n if n >= 0 => self.skip(n as usize, what),
            _ => Err(OutOfBounds(what)),
        }
    }

    fn tagged_fields(&mut self) -> Result<(), OutOfBounds> {
        let n = self.uvarint()?;
        for _ in 0..self.fits(n, 2, "tagged field count")? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(usize::try_from(size).unwrap_or(usize::MAX), "tagged field")?;
        }
        Ok(())
    }

    /// A string (`i16` length, or compact: unsigned varint length + 1).
    fn string(&mut self, compact: bool, what: &'static str) -> Result<(), OutOfBounds> {
        let len = if compact {
            self.compact_len()?
        } else {
            i64::from(self.i16()?)
        };
        self.skip_len(len, true, what)
    }

    /// An array's element count (`i32`, or compact), each element at least `min` bytes.
    fn array(&mut self, compact: bool, min: u64, what: &'static str) -> Result<u64, OutOfBounds> {
        let n = if compact {
            self.uvarint()?.saturating_sub(1)
        } else {
            u64::try_from(self.i32()?).unwrap_or(0)
        };
        self.fits(n, min, what)
    }
}

/// Checks a Produce request body (versions 3–11) for counts and lengths beyond its bytes.
pub fn produce_request(body: &Bytes, version: i16) -> Result<(), OutOfBounds> {
    let compact = version >= 9;
    let mut w = Walker { buf: body.clone() };
    w.string(compact, "transactional id")?;
    w.i16()?;
    w.i32()?;
    for _ in 0..w.array(compact, 2, "topic count")? {
        w.string(compact, "topic name")?;
        for _ in 0..w.array(compact, 5, "partition count")? {
            w.i32()?;
            let len = if compact {
                w.compact_len()?
            } else {
                i64::from(w.i32()?)
            };
            w.skip_len(len, true, "records")?;
            if compact {
                w.tagged_fields()?;
            }
        }
        if compact {
            w.tagged_fields()?;
        }
    }
    if compact {
        w.tagged_fields()?;
    }
    Ok(())
}

/// Offset of the record count in a v2 record batch, and the header's length.
const RECORD_COUNT_AT: usize = 57;
const HEADER_LEN: usize = 61;
/// The smallest record: length, attributes, timestamp and offset deltas, key and value
/// lengths, header count.
const MIN_RECORD: u64 = 7;

/// The record count a v2 batch claims (before decoding it).
pub fn record_count(batch: &Bytes) -> Result<i32, OutOfBounds> {
    if batch.len() < HEADER_LEN {
        return Err(OutOfBounds("record batch header"));
    }
    let c = &batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4];
    Ok(i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// The decompressor to hand `RecordBatchDecoder::decode_with_custom_compression`: the library's
/// own codecs, then every record of the decompressed bytes checked against `count` (records
/// and headers that fit), so the decoder allocates only for what is there.
pub fn decompress(count: i32) -> impl Fn(&mut Bytes, Compression) -> anyhow::Result<Bytes> {
    move |buf: &mut Bytes, compression| {
        let copy = |b: &mut Bytes| Ok(b.clone());
        let out: Bytes = match compression {
            Compression::None => buf.copy_to_bytes(buf.remaining()),
            Compression::Gzip => Gzip::decompress(buf, copy)?,
            Compression::Snappy => Snappy::decompress(buf, copy)?,
            Compression::Lz4 => Lz4::decompress(buf, copy)?,
            Compression::Zstd => Zstd::decompress(buf, copy)?,
        };
        records(&out, count)?;
        Ok(out)
    }
}

/// Checks `count` records of a batch's (decompressed) record bytes.
pub fn records(buf: &Bytes, count: i32) -> Result<(), OutOfBounds> {
    let mut w = Walker { buf: buf.clone() };
    let count = u64::try_from(count).map_err(|_| OutOfBounds("negative record count"))?;
    for _ in 0..w.fits(count, MIN_RECORD, "record count")? {
        let len = w.zigzag()?;
        if len <= 0 || len as u64 > w.buf.remaining() as u64 {
            return Err(OutOfBounds("record length"));
        }
        let mut r = Walker {
            buf: w.buf.split_to(len as usize),
        };
        r.u8()?;
        r.zigzag_long()?;
        r.zigzag()?;
        let key = r.zigzag()?;
        r.skip_len(key, true, "record key")?;
        let value = r.zigzag()?;
        r.skip_len(value, true, "record value")?;
        let headers = u64::try_from(r.zigzag()?).map_err(|_| OutOfBounds("header count"))?;
        for _ in 0..r.fits(headers, 2, "header count")? {
            let k = r.zigzag()?;
            r.skip_len(k, false, "header key")?;
            let v = r.zigzag()?;
            r.skip_len(v, true, "header value")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::protocol::Encodable as _;

    fn zz(v: i64, out: &mut Vec<u8>) {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (u & 0x7f) as u8;
            u >>= 7;
            if u == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn a_request_claiming_more_than_it_holds_is_refused_before_decoding() {
        // acks, timeout, then two billion topics in eight bytes.
        let mut v3 = vec![0xff, 0xff, 0, 1, 0, 0, 0, 10];
        v3.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        assert_eq!(
            produce_request(&Bytes::from(v3), 3),
            Err(OutOfBounds("topic count"))
        );
        // A real one passes, at both encodings.
        for version in [3, 9] {
            let mut b = BytesMut::new();
            ProduceRequest::default().encode(&mut b, version).unwrap();
            assert_eq!(produce_request(&b.freeze(), version), Ok(()));
        }
    }

    #[test]
    fn a_record_claiming_two_billion_headers_is_refused() {
        let mut rec = vec![0u8];
        zz(0, &mut rec);
        zz(0, &mut rec);
        zz(-1, &mut rec);
        zz(1, &mut rec);
        rec.push(b'v');
        zz(i64::from(i32::MAX), &mut rec);
        let mut buf = Vec::new();
        zz(rec.len() as i64, &mut buf);
        buf.extend_from_slice(&rec);
        let buf = Bytes::from(buf);
        assert_eq!(records(&buf, 1), Err(OutOfBounds("header count")));
        assert_eq!(
            records(&buf, 1_000_000_000),
            Err(OutOfBounds("record count"))
        );
        assert_eq!(records(&buf, -1), Err(OutOfBounds("negative record count")));
    }
}
