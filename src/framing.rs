//! Length-delimited framing (a protobuf varint length, then the message), the file format of
//! `generate --out` and of the embedded default source. Reading streams the file in blocks,
//! so a pull from a file never holds the whole file in memory.

use std::io::{self, Read, Write};

/// Largest message the reader accepts; a longer length means the file is not framed data.
pub const MAX_MESSAGE: usize = 16 << 20;

pub fn write_delimited(out: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = msg.len() as u64;
    let mut i = 0;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf[i] = b;
            i += 1;
            break;
        }
        buf[i] = b | 0x80;
        i += 1;
    }
    out.write_all(&buf[..i])?;
    out.write_all(msg)
}

/// Why a framed stream could not be read further.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("at byte {at}: a length prefix of {len} bytes is longer than any message (the file is not length-delimited FeatureVector data)")]
    TooLong { at: u64, len: u64 },
    #[error("at byte {at}: a malformed varint length prefix")]
    BadVarint { at: u64 },
    #[error("at byte {at}: the last message is cut off ({have} of {want} bytes)")]
    Truncated { at: u64, have: usize, want: usize },
}

/// Reads framed messages in blocks: each call to `next_block` returns many whole messages.
pub struct BlockReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    pos: usize,
    /// Stream position of `buf[0]`.
    base: u64,
    eof: bool,
    block: usize,
}

/// A block of whole messages: `data[span.0 .. span.0 + span.1]` for each span.
#[derive(Debug, Default)]
pub struct Block {
    pub data: Vec<u8>,
    pub spans: Vec<(u32, u32)>,
}

impl<R: Read> BlockReader<R> {
    pub fn new(inner: R, block: usize) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(block * 2),
            pos: 0,
            base: 0,
            eof: false,
            block: block.max(64),
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        // Keep the unread tail, then read up to one block more.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        let start = self.buf.len();
        let want = self.block.max(start);
        self.buf.resize(start + want, 0);
        let mut filled = start;
        while filled < self.buf.len() {
            match self.inner.read(&mut self.buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.truncate(filled);
        Ok(())
    }

    /// The next block of whole messages, or `None` at a clean end of stream.
    pub fn next_block(&mut self) -> Result<Option<Block>, FrameError> {
        loop {
            let mut spans = Vec::new();
            let mut p = self.pos;
            loop {
                let (len, used) = match read_varint(&self.buf[p..]) {
                    Varint::Value(len, used) => (len, used),
                    Varint::Incomplete => break,
                    Varint::Malformed => {
                        return Err(FrameError::BadVarint {
                            at: self.base + p as u64,
                        })
                    }
                };
                if len > MAX_MESSAGE as u64 {
                    return Err(FrameError::TooLong {
                        at: self.base + p as u64,
                        len,
                    });
                }
                let end = p + used + len as usize;
                if end > self.buf.len() {
                    break;
                }
                spans.push(((p + used) as u32, len as u32));
                p = end;
            }
            if !spans.is_empty() {
                // Copy out only the messages (framing dropped), re-basing spans.
                let first = spans[0].0 as usize;
                let last = spans.last().map(|s| (s.0 + s.1) as usize).unwrap_or(first);
                let mut data = Vec::with_capacity(last - self.pos);
                let mut out_spans = Vec::with_capacity(spans.len());
                for (s, l) in spans {
                    out_spans.push((data.len() as u32, l));
                    data.extend_from_slice(&self.buf[s as usize..(s + l) as usize]);
                }
                self.pos = p;
                return Ok(Some(Block {
                    data,
                    spans: out_spans,
                }));
            }
            if self.eof {
                let rest = self.buf.len() - self.pos;
                if rest == 0 {
                    return Ok(None);
                }
                let at = self.base + self.pos as u64;
                return Err(match read_varint(&self.buf[self.pos..]) {
                    Varint::Value(len, used) => FrameError::Truncated {
                        at,
                        have: rest - used,
                        want: len as usize,
                    },
                    _ => FrameError::BadVarint { at },
                });
            }
            self.fill()?;
        }
    }
}

enum Varint {
    Value(u64, usize),
    Incomplete,
    Malformed,
}

fn read_varint(b: &[u8]) -> Varint {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Varint::Value(v, i + 1);
        }
    }
    if b.len() >= 10 {
        Varint::Malformed
    } else {
        Varint::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(msgs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            write_delimited(&mut out, m).unwrap();
        }
        out
    }

    fn read_all(data: &[u8], block: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut r = BlockReader::new(data, block);
        let mut out = Vec::new();
        while let Some(b) = r.next_block()? {
            for (s, l) in b.spans {
                out.push(b.data[s as usize..(s + l) as usize].to_vec());
            }
        }
        Ok(out)
    }

    proptest! {
        #[test]
        fn round_trip_any_block_size(
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..50),
            block in 1usize..700,
        ) {
            let data = frame(&msgs);
            prop_assert_eq!(read_all(&data, block).unwrap(), msgs);
        }
    }

    #[test]
    fn truncated_tail_is_reported_with_its_position() {
        let mut data = frame(&[vec![1; 10], vec![2; 10]]);
        data.truncate(data.len() - 3);
        let err = read_all(&data, 64).unwrap_err().to_string();
        assert_eq!(
            err,
            "at byte 11: the last message is cut off (7 of 10 bytes)"
        );
    }

    #[test]
    fn absurd_length_is_not_framed_data() {
        let data = [0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2];
        let err = read_all(&data, 64).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { at: 0, .. }), "{err}");
    }
}
