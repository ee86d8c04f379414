//! Kernel ring-buffer records as the daemon reads them: the decoder over any
//! bytes (every length checked against the record, bad records reported,
//! never trusted), each record kind forced in turn, and every event that
//! decodes folded into a recorder, then finished. Socket addresses from
//! tracee memory too. Nothing here may panic.
#![no_main]

use cilock_evidence::digest::HashAlg;
use cilock_trace::decode::{self, sockaddr, Clock, Record};
use cilock_trace::fold::hash::{Hashed, Hasher, Identity};
use cilock_trace::fold::Recorder;
use cilock_trace::syscall::Host;
use libfuzzer_sys::fuzz_target;

/// Hashes nothing: the fuzzer's paths are not files to read.
struct NoFiles;

impl Hasher for NoFiles {
    fn hash_all(
        &self,
        jobs: &[(&str, Vec<Identity>)],
        _: &[HashAlg],
        _: u64,
        _: std::time::Duration,
    ) -> Vec<Hashed> {
        jobs.iter().map(|_| Hashed::Unreadable).collect()
    }
}

fn no_pidfd(_: u32, _: i64) -> Option<i64> {
    Some(1)
}

fuzz_target!(|data: &[u8]| {
    let _ = sockaddr::decode(data);
    let clock = Clock::now();
    let host = Host {
        daemon_pid: 1,
        daemon_pidfd_inode: Some(7),
        pidfd_target: &no_pidfd,
    };
    let mut r = Recorder::new(Some(1));
    let mut fold = |b: &[u8]| {
        if let Ok(Record::Event { event, .. }) = decode::decode(b, &clock, &host) {
            r.push(event);
        }
    };
    fold(data);
    // The header's kind (bytes 0..4, little endian on the machines cilock
    // runs on) set to each known kind, so every decoder sees the bytes.
    if data.len() >= 4 {
        let mut b = data.to_vec();
        for k in 0..16u32 {
            b[..4].copy_from_slice(&k.to_ne_bytes());
            fold(&b);
        }
    }
    let _ = r.finish(&NoFiles, &[HashAlg::Sha256], &[1]);
});
