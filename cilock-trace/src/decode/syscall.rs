//! Suspicious-syscall records → [`crate::SuspiciousCall`].
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

/// A `kind::SYSCALL` record.
pub(super) fn syscall(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: SyscallRecord = read(b, k)?;
    let mut p = size_of::<SyscallRecord>();
    let mut strs: [Option<String>; 3] = [None, None, None];
    for (i, s) in strs.iter_mut().enumerate() {
        let bytes = slice(b, p, e.str_len[i] as usize, k)?;
        p += bytes.len();
        if e.str_len[i] > 0 || e.str_fault & (1 << i) == 0 {
            *s = Some(escape(bytes));
        }
    }
    let path_b = slice(b, p, e.path.len as usize, k)?;
    let fd_path = (e.path.len > 0).then(|| {
        if e.path.flags & path_flags::ESCAPED != 0 {
            // nsfs, anon inodes: the name is the whole story.
            escape(path_b).trim_end_matches('/').to_string()
        } else {
            rebuild_path(&e.path, path_b, 0).0
        }
    });
    let call = SuspiciousCall::from_record(&e, strs, fd_path, hdr.tgid, r.host);
    Ok(r.ev(TraceEvent::Syscall {
        pid: hdr.tgid,
        call,
        time,
    }))
}
