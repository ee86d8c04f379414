//! Reading the memory of a stopped tracee: `process_vm_readv` first, then
//! `/proc/PID/mem` (which also works when the tracee's pages are not
//! readable via the vm calls, e.g. across a partially unmapped range).

use std::io::{IoSliceMut, Read, Seek, SeekFrom};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

/// Page size used to split reads so one unmapped page does not lose the
/// readable prefix.
const PAGE: usize = 4096;

/// Reads up to `len` bytes at `addr` in thread `tid`. Returns the readable
/// prefix (possibly shorter than `len`, possibly empty). Never fails: a
/// vanished process or a bad pointer just yields fewer bytes.
pub fn read_bytes(tid: u32, addr: u64, len: usize) -> Vec<u8> {
    if addr == 0 || len == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(len);
    let mut cur = addr;
    while out.len() < len {
        // Up to the end of the current page.
        let in_page = PAGE - (cur as usize % PAGE);
        let want = in_page.min(len - out.len());
        let mut buf = vec![0u8; want];
        let n = read_chunk(tid, cur, &mut buf);
        out.extend_from_slice(&buf[..n]);
        if n < want {
            break;
        }
        match cur.checked_add(n as u64) {
            Some(c) => cur = c,
            None => break,
        }
    }
    out
}

fn read_chunk(tid: u32, addr: u64, buf: &mut [u8]) -> usize {
    let want = buf.len();
    let remote = [RemoteIoVec {
        base: addr as usize,
        len: want,
    }];
    let mut local = [IoSliceMut::new(buf)];
    match process_vm_readv(Pid::from_raw(tid as i32), &mut local, &remote) {
        Ok(n) if n > 0 => return n,
        _ => {}
    }
    // Fallback: /proc/PID/mem (we are the tracer, so access is allowed).
    let Ok(mut f) = std::fs::File::open(format!("/proc/{tid}/mem")) else {
        return 0;
    };
    if f.seek(SeekFrom::Start(addr)).is_err() {
        return 0;
    }
    let mut done = 0;
    while done < want {
        match f.read(&mut buf[done..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    done
}

/// Reads a NUL-terminated string of at most `max` bytes at `addr`. Returns
/// the bytes without the NUL and whether the terminator was found.
pub fn read_cstr(tid: u32, addr: u64, max: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut cur = addr;
    if addr == 0 {
        return (out, false);
    }
    while out.len() < max {
        let in_page = PAGE - (cur as usize % PAGE);
        let chunk = read_bytes(tid, cur, in_page.min(max - out.len()));
        if chunk.is_empty() {
            return (out, false);
        }
        if let Some(p) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..p]);
            return (out, true);
        }
        cur += chunk.len() as u64;
        out.extend_from_slice(&chunk);
    }
    (out, false)
}

/// Reads a native-endian u64 at `addr`.
pub fn read_u64(tid: u32, addr: u64) -> Option<u64> {
    let b = read_bytes(tid, addr, 8);
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

/// Reads a native-endian u32 at `addr`.
pub fn read_u32(tid: u32, addr: u64) -> Option<u32> {
    let b = read_bytes(tid, addr, 4);
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_strings() {
        let data = b"hello\0world".to_vec();
        let me = std::process::id();
        let got = read_bytes(me, data.as_ptr() as u64, data.len());
        assert_eq!(got, data);
        let (s, term) = read_cstr(me, data.as_ptr() as u64, 100);
        assert_eq!(s, b"hello");
        assert!(term);
        assert!(read_bytes(me, 0, 10).is_empty());
        assert!(read_bytes(me, 8, 10).is_empty());
    }
}
