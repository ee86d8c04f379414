//! The cgroup family: leaving and joining steps.
//!
//! | program | hook | record |
//! |---|---|---|
//! | `cgroup_attach_task` | raw_tp `cgroup_attach_task` (dst, path, task, threadgroup) | CGROUP_MOVE, CGROUP_JOIN |
//! | (from `sched_process_fork`/`exec`/`exit`) | a child born elsewhere, the step-process table | CGROUP_MOVE, CGROUP_JOIN |
//!
//!
//! The `cgroup_attach_task` tracepoint fires after the move: when the mover
//! is the moved process it is already outside its step, so its step cannot
//! come from its cgroup. `PROCS` remembers the step of every step process
//! (tgid → step, leader start time): filled when a step process forks or
//! execs and when a process is moved into a step (the daemon's move of a
//! step's root included), emptied at exit and when a process leaves.
//!
//! Where a cgroup lies is decided here, from `cgroup.level` and
//! `cgroup.ancestors[STEP_LEVEL]` (`ancestor_ids` before 6.0): a move
//! within a step is nothing; a move out of step S gives S a `CGROUP_MOVE`;
//! a move into step D (from outside D) gives D a `CGROUP_JOIN`. A child
//! created by `clone3(CLONE_INTO_CGROUP)` is placed the same way at birth.
//! Kernels without those members give user space the decision
//! (`move_flags::DST_UNKNOWN`) and no join records.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use cilock_abi::{CgroupJoinEvent, CgroupMoveEvent, Offsets, ProcStep, kind, move_flags};

use crate::common::maps::{STEP_LEVEL, STEPS, off, ro};
use crate::common::read::{rd, rd_ptr};
use crate::common::record::{emit_fixed, record_loss};

/// A task is moved into a cgroup: a step process leaving its step, or a
/// process joining one (see the module doc).
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: RawTracePointContext) -> i32 {
    let _ = try_cgroup_attach(&ctx);
    0
}

#[inline(always)]
fn try_cgroup_attach(ctx: &RawTracePointContext) -> Option<()> {
    let dst: u64 = ctx.arg(0);
    let task: u64 = ctx.arg(2);
    // The moved task's step comes from PROCS: after a self-move the current
    // task is already outside it.
    on_attach(dst, task)
}

/// Step processes: tgid → (step, leader start time). Bounded; an insert
/// into a full map is counted as a lost `cgroup_move` of the step (that
/// process's later move could go unrecorded).
#[map]
pub static PROCS: HashMap<u32, ProcStep> = HashMap::with_max_entries(65536, 0);

/// Where a cgroup lies.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Not in any active step.
    Outside,
    /// In the active step with this id.
    Step(u64),
    /// The kernel cannot tell (offsets absent, a read failed).
    Unknown,
}

#[inline(always)]
fn absent(v: u64) -> bool {
    v == Offsets::ABSENT as u64
}

/// True unless `cgrp` is known to belong to a cgroup v1 hierarchy (whose
/// moves do not change a task's step).
#[inline(always)]
pub fn is_v2(cgrp: u64) -> bool {
    let (r, h) = (off!(cgroup_root), off!(cgroup_root_hierarchy_id));
    if absent(r) || absent(h) {
        return true;
    }
    match rd_ptr(cgrp, r).and_then(|root| rd::<i32>(root + h)) {
        Some(id) => id == 0,
        None => true,
    }
}

/// The kernfs id of `cgrp`.
#[inline(always)]
pub fn cgroup_id(cgrp: u64) -> u64 {
    rd_ptr(cgrp, off!(cgroup_kn))
        .and_then(|kn| rd::<u64>(kn + off!(kernfs_node_id)))
        .unwrap_or(0)
}

/// Where the cgroup2 cgroup `cgrp` lies.
#[inline(always)]
pub fn place_of(cgrp: u64) -> Place {
    let lvl_off = off!(cgroup_level);
    if absent(lvl_off) {
        return Place::Unknown;
    }
    let Some(level) = rd::<i32>(cgrp + lvl_off) else {
        return Place::Unknown;
    };
    let sl = ro(&STEP_LEVEL);
    if level < 0 || (level as u32) < sl {
        return Place::Outside;
    }
    let (anc, ids) = (off!(cgroup_ancestors), off!(cgroup_ancestor_ids));
    let id = if !absent(anc) {
        match rd_ptr(cgrp, anc + 8 * (sl as u64 & 0xffff)) {
            Some(a) => cgroup_id(a),
            None => return Place::Unknown,
        }
    } else if !absent(ids) {
        match rd::<u64>(cgrp + ids + 8 * (sl as u64 & 0xffff)) {
            Some(v) => v,
            None => return Place::Unknown,
        }
    } else {
        return Place::Unknown;
    };
    if id != 0 && unsafe { STEPS.get(&id) }.is_some() {
        Place::Step(id)
    } else {
        Place::Outside
    }
}

/// The cgroup2 cgroup of `task` (`task->cgroups->dfl_cgrp`).
#[inline(always)]
pub fn task_cgroup(task: u64) -> Option<u64> {
    let (c, d) = (off!(task_cgroups), off!(css_set_dfl_cgrp));
    if absent(c) || absent(d) {
        return None;
    }
    rd_ptr(task, c).and_then(|cset| rd_ptr(cset, d))
}

/// Start time of `task`'s thread-group leader.
#[inline(always)]
pub fn leader_start(task: u64) -> u64 {
    match rd_ptr(task, off!(task_group_leader)) {
        Some(l) => rd::<u64>(l + off!(task_start_time)).unwrap_or(0),
        None => 0,
    }
}

/// The active step the process `tgid` (leader started at `start`) was
/// last seen in.
#[inline(always)]
pub fn step_of_proc(tgid: u32, start: u64) -> Option<u64> {
    let v = unsafe { PROCS.get(&tgid) }?;
    if v.leader_start != start || unsafe { STEPS.get(&v.step) }.is_none() {
        return None;
    }
    Some(v.step)
}

/// Remembers that `tgid` is a process of `step`; a full map is counted.
#[inline(always)]
pub fn remember(tgid: u32, step: u64, start: u64) {
    if let Some(v) = unsafe { PROCS.get(&tgid) } {
        if v.step == step && v.leader_start == start {
            return;
        }
    }
    let v = ProcStep {
        step,
        leader_start: start,
    };
    if PROCS.insert(&tgid, &v, 0).is_err() {
        record_loss(step, kind::CGROUP_MOVE);
    }
}

/// Forgets `tgid` (it exited, or left every step).
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = PROCS.remove(&tgid);
}

/// A `CGROUP_MOVE` record for `step`: `moved` went to `dst`.
#[inline(always)]
pub fn emit_move(step: u64, dst: u64, moved: u32, flags: u32) {
    emit_fixed::<CgroupMoveEvent>(step, |ev| {
        ev.dst_cgroup = dst;
        ev.moved_tgid = moved;
        ev.flags = flags;
    });
}

/// A `CGROUP_JOIN` record for `step`: `moved` came into `dst` from `src`
/// (a step id, or 0).
#[inline(always)]
pub fn emit_join(step: u64, dst: u64, src: u64, moved: u32, flags: u32) {
    emit_fixed::<CgroupJoinEvent>(step, |ev| {
        ev.dst_cgroup = dst;
        ev.src_step = src;
        ev.moved_tgid = moved;
        ev.flags = flags;
    });
}

/// `cgroup_attach_task(dst, path, task, threadgroup)`: `task` was moved
/// into `dst` by the current task.
#[inline(always)]
pub fn on_attach(dst: u64, task: u64) -> Option<()> {
    if !is_v2(dst) {
        return None;
    }
    let tgid = rd::<u32>(task + off!(task_tgid))?;
    let start = leader_start(task);
    let src = step_of_proc(tgid, start);
    let dst_id = cgroup_id(dst);
    match place_of(dst) {
        Place::Unknown => {
            if let Some(s) = src {
                emit_move(s, dst_id, tgid, move_flags::DST_UNKNOWN);
            }
        }
        Place::Outside => {
            if let Some(s) = src {
                emit_move(s, dst_id, tgid, 0);
            }
            forget(tgid);
        }
        Place::Step(d) => {
            if let Some(s) = src {
                if s != d {
                    emit_move(s, dst_id, tgid, 0);
                }
            }
            if src != Some(d) {
                emit_join(d, dst_id, src.unwrap_or(0), tgid, 0);
            }
            remember(tgid, d, start);
        }
    }
    Some(())
}

/// A new process `child` (a thread-group leader) whose parent, the current
/// task, is in `parent_step` (if any); the caller has emitted the FORK
/// record. A child born outside the parent's step has left it at birth; one
/// born in another step has joined that one.
#[inline(always)]
pub fn on_fork(parent_step: Option<u64>, child: u64, tgid: u32) {
    let start = rd::<u64>(child + off!(task_start_time)).unwrap_or(0);
    let (place, cg) = match task_cgroup(child) {
        Some(cg) => (place_of(cg), cgroup_id(cg)),
        None => (Place::Unknown, 0),
    };
    if let Some(s) = parent_step {
        match place {
            Place::Step(d) if d == s => remember(tgid, s, start),
            Place::Unknown => remember(tgid, s, start),
            _ => emit_move(s, cg, tgid, move_flags::AT_FORK),
        }
    }
    if let Place::Step(d) = place {
        if parent_step != Some(d) {
            emit_join(d, cg, parent_step.unwrap_or(0), tgid, move_flags::AT_FORK);
            remember(tgid, d, start);
        }
    }
}

/// The current task, in `step`, exec'd: remember it (a process whose fork
/// was not remembered, e.g. a full map at the time).
#[inline(always)]
pub fn on_exec(step: u64, task: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    remember(tgid, step, leader_start(task));
}
