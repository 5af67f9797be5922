//! A guard in front of the WebSocket decoder that reads each client frame's header as it
//! streams in and stops the stream as soon as a frame *declares* a length over the
//! limit. actix's decoder checks the limit only once the whole frame has arrived, so a
//! header claiming 2^62 bytes would otherwise make the node buffer whatever follows.
//! The guard looks at headers only; payload bytes pass through untouched.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Where in the client's byte stream the guard is.
#[derive(Debug)]
enum Position {
    /// Collecting a frame header.
    Header {
        bytes: [u8; MAX_HEADER],
        have: usize,
    },
    /// Inside a payload with this many bytes to go.
    Payload(u64),
}

/// Wraps the upgrade's request stream; see the module docs.
pub struct FrameGuard<S> {
    inner: S,
    max_frame: u64,
    position: Position,
    /// Set when a frame over the limit was announced; the session closes with 1009.
    oversized: Arc<AtomicBool>,
    tripped: bool,
}

impl<S> FrameGuard<S> {
    /// Guards `inner`, allowing frames up to `max_frame` bytes; `oversized` is raised
    /// when one is announced larger.
    pub fn new(inner: S, max_frame: usize, oversized: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            max_frame: max_frame as u64,
            position: Position::Header {
                bytes: [0; MAX_HEADER],
                have: 0,
            },
            oversized,
            tripped: false,
        }
    }

    /// The header length and payload length once `bytes[..have]` holds a whole header.
    fn parse_header(bytes: &[u8; MAX_HEADER], have: usize) -> Option<(usize, u64)> {
        if have < 2 {
            return None;
        }
        let masked = bytes[1] & 0x80 != 0;
        let short = bytes[1] & 0x7f;
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extended + if masked { 4 } else { 0 };
        if have < header {
            return None;
        }
        let length = match extended {
            2 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            8 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&bytes[2..10]);
                u64::from_be_bytes(be)
            }
            _ => u64::from(short),
        };
        Some((header, length))
    }

    /// Follows the frame structure through `chunk`; `false` when a frame over the
    /// limit was announced.
    fn inspect(&mut self, mut chunk: &[u8]) -> bool {
        while !chunk.is_empty() {
            match &mut self.position {
                Position::Payload(left) => {
                    let skip = (*left).min(chunk.len() as u64);
                    *left -= skip;
                    chunk = &chunk[skip as usize..];
                    if *left == 0 {
                        self.position = Position::Header {
                            bytes: [0; MAX_HEADER],
                            have: 0,
                        };
                    }
                }
                Position::Header { bytes, have } => {
                    // Take only what this header can need, so payload bytes are skipped,
                    // not copied.
                    let needed = match Self::parse_header(bytes, *have) {
                        Some(_) => 0,
                        None if *have < 2 => 2 - *have,
                        None => 1,
                    };
                    let take = needed.min(chunk.len());
                    bytes[*have..*have + take].copy_from_slice(&chunk[..take]);
                    *have += take;
                    chunk = &chunk[take..];
                    if let Some((_, length)) = Self::parse_header(bytes, *have) {
                        if length > self.max_frame {
                            return false;
                        }
                        self.position = if length == 0 {
                            Position::Header {
                                bytes: [0; MAX_HEADER],
                                have: 0,
                            }
                        } else {
                            Position::Payload(length)
                        };
                    }
                }
            }
        }
        true
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.tripped {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if self.inspect(&chunk) {
                    Poll::Ready(Some(Ok(chunk)))
                } else {
                    self.tripped = true;
                    self.oversized.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: usize) -> FrameGuard<futures_util::stream::Empty<Result<Bytes, PayloadError>>> {
        FrameGuard::new(futures_util::stream::empty(), max, Arc::default())
    }

    /// A masked client frame header for a payload of `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn frames_within_the_limit_pass_even_when_split_anywhere() {
        let mut stream = Vec::new();
        for len in [0u64, 5, 125, 126, 300, 1000] {
            stream.extend(header(len));
            stream.extend(std::iter::repeat_n(b'x', len as usize));
        }
        for split in [1, 2, 3, 7, 64, 4096] {
            let mut g = guard(1000);
            assert!(stream.chunks(split).all(|c| g.inspect(c)), "split {split}");
        }
    }

    #[test]
    fn an_announced_length_over_the_limit_trips_before_any_payload() {
        let mut g = guard(1000);
        assert!(!g.inspect(&header(1 << 62)));
        let mut g = guard(1000);
        let h = header(1001);
        assert!(g.inspect(&h[..3]));
        assert!(!g.inspect(&h[3..]));
    }
}
