//! Process records: exec, fork and exit.
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

pub(super) fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    escape(&c[..end])
}

/// `status` as the kernel keeps it → the exit code a shell reports.
pub fn exit_code(status: u32) -> i32 {
    let sig = status & 0x7f;
    if sig == 0 {
        ((status >> 8) & 0xff) as i32
    } else {
        128 + sig as i32
    }
}

/// A `kind::EXEC` record.
pub(super) fn exec(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: ExecEvent = read(b, k)?;
    let mut p = size_of::<ExecEvent>();
    let fname = slice(b, p, e.filename_len as usize, k)?;
    p += fname.len();
    let args = slice(b, p, e.args_len as usize, k)?;
    p += args.len();
    let exe_b = slice(b, p, e.exe.len as usize, k)?;
    p += exe_b.len();
    let cwd_b = slice(b, p, e.cwd.len as usize, k)?;
    let (mut exe, mut exe_why) = rebuild_path(&e.exe, exe_b, e.exe_inode.ino);
    if let Some(m) = memfd_name(&e.exe, exe_b) {
        // A fileless program: named as the kernel names it.
        (exe, exe_why) = (m, None);
    }
    let (cwd, cwd_why) = rebuild_path(&e.cwd, cwd_b, 0);
    let mut argv: Vec<String> = args.split(|&c| c == 0).map(escape).collect();
    // argv ends with a NUL: drop the empty tail it leaves.
    if argv.last().is_some_and(|a| a.is_empty()) {
        argv.pop();
    }
    Ok(r.ev(TraceEvent::Exec {
        pid: hdr.tgid,
        ppid: (e.ppid != 0).then_some(e.ppid),
        filename: escape(fname),
        exe: (e.exe.len > 0 && exe_why.is_none()).then_some(exe),
        exe_stamp: (e.exe_inode.ino != 0).then(|| file_stamp(&e.exe_inode)),
        cwd: (e.cwd.len > 0 && cwd_why.is_none()).then_some(cwd),
        argv,
        comm: comm(&hdr.comm),
        mnt_ns: (e.mnt_ns != 0).then_some(u64::from(e.mnt_ns)),
        time,
    }))
}

/// A `kind::FORK` record.
pub(super) fn fork(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: ForkEvent = read(b, k)?;
    Ok(r.ev(TraceEvent::Fork {
        parent: hdr.tgid,
        child: e.child_tgid,
        time,
    }))
}

/// A `kind::EXIT` record.
pub(super) fn exit(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: ExitEvent = read(b, k)?;
    Ok(r.ev(TraceEvent::Exit {
        pid: hdr.tgid,
        code: exit_code(e.exit_code),
        time,
    }))
}
