//! Cgroup records: processes moved out of, or into, a step.
//!
//! The bytes after the fixed part are data from the traced job: every
//! length is checked against the record (see the parent module).

use super::*;

/// A `kind::CGROUP_MOVE` record.
pub(super) fn cgroup_move(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: CgroupMoveEvent = read(b, k)?;
    Ok(Record::CgroupMove {
        step_cgroup: hdr.step_cgroup,
        moved: e.moved_tgid,
        by: hdr.tgid,
        dst: e.dst_cgroup,
        time,
        flags: e.flags,
    })
}

/// A `kind::CGROUP_JOIN` record.
pub(super) fn cgroup_join(r: &Raw<'_>) -> Result<Record, DecodeError> {
    let (b, k, hdr, time) = (r.b, r.k, &r.hdr, r.time);
    let e: CgroupJoinEvent = read(b, k)?;
    Ok(Record::CgroupJoin {
        step_cgroup: hdr.step_cgroup,
        moved: e.moved_tgid,
        by: hdr.tgid,
        dst: e.dst_cgroup,
        src_step: e.src_step,
        flags: e.flags,
        time,
    })
}
