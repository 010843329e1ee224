//! Bounds checks before the codec allocates: `kafka-protocol` sizes its vectors from the counts
//! on the wire (`Vec::with_capacity(n)`), so a 20-byte request claiming two billion topics, or
//! a record claiming two billion headers, would make the process abort on allocation — every
//! connection lost for one bad one. These walkers check each count against the bytes that are
//! actually there (every element takes at least one byte) before the real decoder runs.

use bytes::{Buf as _, Bytes};
use kafka_protocol::compression::{Decompressor as _, Snappy};
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

/// The largest a batch may expand to when decompressed (a 1 MiB frame of gzip could otherwise
/// claim a gigabyte).
pub const MAX_DECOMPRESSED: usize = 64 << 20;
/// The largest zstd window (log2) the front decodes with: the decoder's memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;
/// The header of Kafka's (xerial) framed snappy.
const SNAPPY_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// The decompressor to hand `RecordBatchDecoder::decode_with_custom_compression`: each codec
/// read through [`MAX_DECOMPRESSED`], then every record of the decompressed bytes checked
/// against `count` (records and headers that fit), so the decoder allocates only for what is
/// there.
pub fn decompress(count: i32) -> impl Fn(&mut Bytes, Compression) -> anyhow::Result<Bytes> {
    move |buf: &mut Bytes, compression| {
        let mut input = buf.copy_to_bytes(buf.remaining());
        let out: Bytes = match compression {
            Compression::None => input,
            Compression::Gzip => bounded(flate2::read::MultiGzDecoder::new(input.reader()))?,
            Compression::Lz4 => bounded(lz4::Decoder::new(input.reader())?)?,
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(input.reader())?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                bounded(d)?
            }
            Compression::Snappy => {
                // The library's decoder allocates what each block claims: sum the claims first.
                snappy_len(&input)?;
                Snappy::decompress(&mut input, |b: &mut Bytes| Ok(std::mem::take(b)))?
            }
        };
        records(&out, count)?;
        Ok(out)
    }
}

/// Reads a decompressing stream to its end, or fails past [`MAX_DECOMPRESSED`].
fn bounded(reader: impl std::io::Read) -> anyhow::Result<Bytes> {
    use std::io::Read as _;
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(OutOfBounds("batch expands beyond 64 MiB").into());
    }
    Ok(out.into())
}

/// The decompressed size snappy bytes claim (framed or raw, as Kafka's clients write them),
/// checked against [`MAX_DECOMPRESSED`] block by block.
fn snappy_len(input: &[u8]) -> Result<usize, OutOfBounds> {
    let claim =
        |b: &[u8]| snap::raw::decompress_len(b).map_err(|_| OutOfBounds("snappy block length"));
    let too_big = OutOfBounds("batch expands beyond 64 MiB");
    let Some(mut rest) = input.strip_prefix(&SNAPPY_MAGIC[..]) else {
        let n = claim(input)?;
        return if n > MAX_DECOMPRESSED {
            Err(too_big)
        } else {
            Ok(n)
        };
    };
    let mut total = 0usize;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or(OutOfBounds("snappy block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(OutOfBounds("snappy block"));
        }
        total = total.saturating_add(claim(&tail[..len])?);
        if total > MAX_DECOMPRESSED {
            return Err(too_big);
        }
        rest = &tail[len..];
    }
    Ok(total)
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

    /// Zeros compress to almost nothing: 65 MiB of them in each codec must be refused at the
    /// limit, not expanded; a small batch in each codec still decodes to its bytes.
    #[test]
    fn decompression_stops_at_the_limit_in_every_codec() {
        use kafka_protocol::compression::{Gzip, Lz4, Snappy, Zstd};
        fn pack<C>(raw: &[u8]) -> Bytes
        where
            C: kafka_protocol::compression::Compressor<BytesMut>,
            C::BufMut: bytes::BufMut,
        {
            use bytes::BufMut as _;
            let mut out = BytesMut::new();
            C::compress(&mut out, |b| {
                b.put_slice(raw);
                Ok(())
            })
            .unwrap();
            out.freeze()
        }
        let bomb = vec![0u8; MAX_DECOMPRESSED + (1 << 20)];
        let fine = vec![7u8; 4096];
        for (name, compression, packed_bomb, packed_fine) in [
            (
                "gzip",
                Compression::Gzip,
                pack::<Gzip>(&bomb),
                pack::<Gzip>(&fine),
            ),
            (
                "lz4",
                Compression::Lz4,
                pack::<Lz4>(&bomb),
                pack::<Lz4>(&fine),
            ),
            (
                "zstd",
                Compression::Zstd,
                pack::<Zstd>(&bomb),
                pack::<Zstd>(&fine),
            ),
            (
                "snappy",
                Compression::Snappy,
                pack::<Snappy>(&bomb),
                pack::<Snappy>(&fine),
            ),
        ] {
            assert!(
                packed_bomb.len() < 4 << 20,
                "{name}: {} bytes",
                packed_bomb.len()
            );
            let err = decompress(0)(&mut packed_bomb.clone(), compression)
                .expect_err(name)
                .to_string();
            assert!(err.contains("64 MiB"), "{name}: {err}");
            // Zero records claimed: only the decompression itself is under test here.
            let out = decompress(0)(&mut packed_fine.clone(), compression).expect(name);
            assert_eq!(&out[..], &fine[..], "{name}");
        }
        // A raw snappy block claiming 4 GiB in five bytes.
        let claim = [0x80, 0x80, 0x80, 0x80, 0x10];
        assert!(snappy_len(&claim).is_err());
    }
}
