//! Reassembly of the captured starts of TCP streams: the first
//! [`STREAM_CAPTURE`] bytes of each (step, socket) stream, in order.
//!
//! The pieces come from the traced job's sockets: offsets and lengths are
//! untrusted. Retransmitted bytes are dropped, out-of-order pieces wait for
//! the gap, nothing past [`STREAM_CAPTURE`] is kept, and at most
//! [`MAX_STREAMS`] streams are remembered.

use std::collections::{BTreeMap, HashMap};

pub use cilock_abi::STREAM_CAPTURE;

/// One stream's reassembly state.
#[derive(Default)]
struct Stream {
    /// Bytes delivered so far.
    next: u32,
    /// Out-of-order pieces by offset.
    pending: BTreeMap<u32, Vec<u8>>,
}

/// Reassembles the captured starts of TCP streams per (step, socket):
/// retransmitted bytes are dropped, out-of-order pieces wait for the gap.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<(u64, u64), Stream>,
}

/// Most streams remembered (older ones are forgotten at random).
pub const MAX_STREAMS: usize = 1 << 16;

/// Most out-of-order pieces one stream keeps waiting for a gap.
const MAX_PENDING: usize = 64;

impl Streams {
    /// Adds `bytes` found at `stream_off` of the stream of socket `cookie` in
    /// step `step`; returns the new contiguous bytes, if any.
    pub fn push(
        &mut self,
        step: u64,
        cookie: u64,
        stream_off: u32,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        if self.streams.len() >= MAX_STREAMS {
            if let Some(k) = self.streams.keys().next().copied() {
                self.streams.remove(&k);
            }
        }
        let s = self.streams.entry((step, cookie)).or_default();
        if s.next >= STREAM_CAPTURE {
            return None;
        }
        let end = stream_off.saturating_add(bytes.len() as u32);
        if end <= s.next {
            return None; // a retransmission
        }
        if stream_off > s.next {
            // Only what can still become contiguous within the capture, and
            // a bounded number of pieces waiting for a gap.
            if stream_off >= STREAM_CAPTURE || s.pending.len() >= MAX_PENDING {
                return None;
            }
            s.pending
                .entry(stream_off)
                .or_insert_with(|| bytes.to_vec());
            return None;
        }
        let mut out = bytes[(s.next - stream_off) as usize..].to_vec();
        s.next = end;
        // Pieces the new bytes made contiguous.
        while let Some((&off, _)) = s.pending.first_key_value() {
            if off > s.next {
                break;
            }
            let (off, b) = s.pending.pop_first().unwrap_or_default();
            let e = off.saturating_add(b.len() as u32);
            if e > s.next {
                out.extend_from_slice(&b[(s.next - off) as usize..]);
                s.next = e;
            }
        }
        Some(out)
    }

    /// Forgets the streams of a step.
    pub fn forget_step(&mut self, step: u64) {
        self.streams.retain(|k, _| k.0 != step);
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_by_offset() {
        let mut s = Streams::default();
        let push = |s: &mut Streams, off: u32, b: &[u8]| s.push(1, 4, off, b);
        assert_eq!(push(&mut s, 0, b"abc"), Some(b"abc".to_vec()));
        // retransmission
        assert_eq!(push(&mut s, 0, b"abc"), None);
        // out of order, then the gap
        assert_eq!(push(&mut s, 6, b"ghi"), None);
        assert_eq!(push(&mut s, 2, b"cdef"), Some(b"defghi".to_vec()));
        // overlapping tail
        assert_eq!(push(&mut s, 8, b"ijk"), Some(b"jk".to_vec()));
        s.forget_step(1);
        assert_eq!(push(&mut s, 0, b"x"), Some(b"x".to_vec()));
    }
}
