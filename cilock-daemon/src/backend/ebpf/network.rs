//! Reassembly of captured TCP stream starts ([`Streams`]). The probes that
//! were here are in [`super::probes::net`] and [`super::probes::syscall`],
//! the syscall configuration in [`super::sysconfig`].

use std::collections::{BTreeMap, HashMap};

use cilock_abi::STREAM_CAPTURE;

use super::decode::Payload;
pub use super::sysconfig::daemon_pidfd_inode; // shim: removed at merge

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
const MAX_STREAMS: usize = 1 << 16;

impl Streams {
    /// Adds a TCP payload; returns the new contiguous bytes, if any.
    pub fn push(&mut self, p: &Payload) -> Option<Vec<u8>> {
        if self.streams.len() >= MAX_STREAMS {
            if let Some(k) = self.streams.keys().next().copied() {
                self.streams.remove(&k);
            }
        }
        let s = self.streams.entry((p.step_cgroup, p.cookie)).or_default();
        if s.next >= STREAM_CAPTURE {
            return None;
        }
        let end = p.stream_off.saturating_add(p.bytes.len() as u32);
        if end <= s.next {
            return None; // a retransmission
        }
        if p.stream_off > s.next {
            s.pending
                .entry(p.stream_off)
                .or_insert_with(|| p.bytes.clone());
            return None;
        }
        let mut out = p.bytes[(s.next - p.stream_off) as usize..].to_vec();
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

    fn p(off: u32, b: &[u8]) -> Payload {
        Payload {
            step_cgroup: 1,
            pid: 2,
            fd: 3,
            cookie: 4,
            egress: true,
            tcp: true,
            stream_off: off,
            src: "127.0.0.1:1".parse().unwrap(),
            dst: "127.0.0.1:2".parse().unwrap(),
            bytes: b.to_vec(),
            time: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn reassembles_by_offset() {
        let mut s = Streams::default();
        assert_eq!(s.push(&p(0, b"abc")), Some(b"abc".to_vec()));
        // retransmission
        assert_eq!(s.push(&p(0, b"abc")), None);
        // out of order, then the gap
        assert_eq!(s.push(&p(6, b"ghi")), None);
        assert_eq!(s.push(&p(2, b"cdef")), Some(b"defghi".to_vec()));
        // overlapping tail
        assert_eq!(s.push(&p(8, b"ijk")), Some(b"jk".to_vec()));
        s.forget_step(1);
        assert_eq!(s.push(&p(0, b"x")), Some(b"x".to_vec()));
    }
}
