//! The process table: which processes are the step's (roots, forks, joins,
//! moves out), their images and argv within bounds.

use super::*;
use crate::pathname::lexically_normal;

impl Recorder {
    /// Registers a process that is part of the step from the start (the
    /// target moved in by `step begin`, or the command `run` spawned), with
    /// what `/proc` showed of it (read by the caller).
    pub fn add_root(&mut self, pid: u32, running: Running) {
        let Some(idx) = self.proc_mut(pid, None) else {
            return;
        };
        let p = &mut self.procs[idx];
        p.origin_known = true;
        if p.comm.is_empty() {
            p.comm = running.comm.unwrap_or_default();
        }
        if p.image.is_none() {
            if let Some(exe) = running.exe {
                // The kernel's own link: its target is the running file
                // (stat through it), whatever is at the path now.
                let stamp = running.exe_stamp;
                let exe = crate::pathname::escape_os(exe);
                p.image = Some(Image {
                    program: exe.clone(),
                    exe: Some(exe),
                    exe_stamp: stamp,
                    kind: ImageKind::Binary,
                    foreign: None,
                });
            }
        }
        if let Some(pp) = running.ppid {
            p.ppid = pp;
        }
        if p.mnt_ns == 0 {
            p.mnt_ns = running.mnt_ns.unwrap_or(0);
        }
    }

    /// What the trace saw of the root process `pid` (its first incarnation
    /// in the step): its exit and the argv of its first exec.
    pub fn root_seen(&self, pid: u32) -> RootSeen {
        let Some(p) = self.procs.iter().find(|p| p.pid == pid) else {
            return RootSeen::default();
        };
        RootSeen {
            // -1: a later process took the pid before its exit was seen.
            exit: p.exit.filter(|&c| c >= 0),
            argv: p.first_argv.as_ref().map(|a| a.to_vec()),
        }
    }

    /// The pids seen so far that have not exited.
    pub fn alive(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| p.exit.is_none())
            .map(|p| p.pid)
            .collect()
    }

    /// The current process entry for `pid`, creating it (a new incarnation
    /// if the old one exited: pids are reused). None when the step already
    /// has `max_processes` processes (the process is counted once).
    pub(super) fn proc_mut(&mut self, pid: u32, ppid: Option<u32>) -> Option<usize> {
        if let Some(&i) = self.live.get(&pid) {
            if self.procs[i].exit.is_none() {
                return Some(i);
            }
        }
        if self.procs.len() >= self.limits.max_processes {
            if self.dropped.insert(pid) {
                self.count("processes");
            }
            return None;
        }
        let i = self.procs.len();
        self.procs.push(Proc {
            pid,
            ppid: ppid.unwrap_or(0),
            ..Default::default()
        });
        self.live.insert(pid, i);
        Some(i)
    }

    /// argv cut to the per-process and per-step bounds.
    pub(super) fn bound_argv(&mut self, argv: Vec<String>) -> Vec<String> {
        let cap = MAX_ARGV_BYTES.min(MAX_ARGV_BYTES_PER_STEP.saturating_sub(self.argv_bytes));
        let mut used = 0usize;
        let mut out = Vec::with_capacity(argv.len().min(1024));
        let mut cut = false;
        for mut a in argv {
            let room = cap.saturating_sub(used);
            if room == 0 {
                cut = true;
                break;
            }
            if a.len() + 1 > room {
                let mut end = room.saturating_sub(1);
                while !a.is_char_boundary(end) {
                    end -= 1;
                }
                a.truncate(end);
                used += a.len() + 1;
                out.push(a);
                cut = true;
                break;
            }
            used += a.len() + 1;
            out.push(a);
        }
        self.argv_bytes += used;
        if cut {
            self.count("argv");
        }
        out
    }

    /// Where the live process `pid` came from, if it joined the step.
    pub(super) fn joined_origin(&self, pid: u32) -> Option<String> {
        let &i = self.live.get(&pid)?;
        let p = &self.procs[i];
        (p.exit.is_none() && p.joined).then(|| {
            format!(
                "forked in the step by pid {pid}, which came from {}",
                p.joined_from
            )
        })
    }

    /// Marks `pid` as a root of the step when its process table entry
    /// exists (embedded ptrace runs, whose root is known only by pid).
    pub fn mark_root(&mut self, pid: u32) {
        if let Some(&i) = self.live.get(&pid) {
            self.procs[i].origin_known = true;
        }
    }

    /// A step process `parent` created `pid` outside the step's cgroup.
    pub(super) fn born_outside(&mut self, pid: u32, parent: u32, time: SystemTime) {
        if let Some(i) = self.proc_mut(pid, Some(parent)) {
            let p = &mut self.procs[i];
            p.left_step = true;
            if p.ppid == 0 {
                p.ppid = parent;
            }
        }
        if let Some(j) = self.live.get(&parent).copied() {
            self.push_syscall(
                j,
                SyscallEvent {
                    syscall: "cgroup_leave".into(),
                    detail: format!(
                        "created pid {pid} directly in a cgroup outside the step (clone3 CLONE_INTO_CGROUP)"
                    ),
                    args: vec![pid as i64],
                    timestamp: ts(time),
                    path: String::new(),
                },
            );
        }
    }

    /// `pid` came into the step from `from`, moved (or created) by `by`.
    pub(super) fn joined(
        &mut self,
        pid: u32,
        by: u32,
        from: String,
        at_birth: bool,
        running: Option<Running>,
        time: SystemTime,
    ) {
        let Some(i) = self.proc_mut(pid, at_birth.then_some(by)) else {
            return;
        };
        let p = &mut self.procs[i];
        p.joined = true;
        p.joined_from = from.clone();
        if p.image.is_none() && !at_birth {
            // What it runs, from the kernel's own link (as for a root).
            let running = running.unwrap_or_default();
            p.mnt_ns = running.mnt_ns.unwrap_or(0);
            if let Some(exe) = running.exe {
                let stamp = running.exe_stamp;
                let exe = crate::pathname::escape_os(&exe);
                p.image = Some(Image {
                    program: exe.clone(),
                    exe: Some(exe),
                    exe_stamp: stamp,
                    kind: ImageKind::Binary,
                    foreign: None,
                });
            }
            if p.comm.is_empty() {
                p.comm = running.comm.unwrap_or_default();
            }
        }
        let detail = if at_birth {
            format!(
                "created in the step's cgroup by pid {by} from {from} (clone3 CLONE_INTO_CGROUP)"
            )
        } else if by == pid {
            format!("moved itself into the step's cgroup from {from}")
        } else {
            format!("moved into the step's cgroup by pid {by} from {from}")
        };
        self.push_syscall(
            i,
            SyscallEvent {
                syscall: "cgroup_join".into(),
                detail,
                args: vec![pid as i64, by as i64],
                timestamp: ts(time),
                path: String::new(),
            },
        );
    }
}

/// How the program of an exec is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ProgramKind {
    /// The kernel's exe.
    Binary,
    /// A script (the exe is its interpreter).
    Script,
    /// The kernel's exe path is unknown.
    Unnamed,
}

/// The program of an exec, decided without touching the filesystem (the
/// job's symlinks are never followed as root):
/// - the kernel's absolute exe path when the execve name is that path
///   (made absolute against the cwd and normalised lexically), or when it
///   reached the same file through a symlink;
/// - for a script (the kernel rewrote argv to `interpreter [arg] NAME …`,
///   so NAME is `argv[1]` or `argv[2]`), the script's name made absolute
///   lexically: its content is proven only by its interpreter's open;
/// - the execve name, made absolute, when the kernel gave no exe path.
pub(super) fn program_of(
    filename: &str,
    cwd: Option<&str>,
    exe: Option<&str>,
    argv: &[String],
) -> (String, ProgramKind) {
    let fd_like = filename.starts_with("/dev/fd/") || filename.starts_with("/proc/");
    let lexical = if fd_like {
        None
    } else if filename.starts_with('/') {
        Some(lexically_normal(filename))
    } else {
        cwd.map(|c| lexically_normal(&format!("{c}/{filename}")))
    };
    let Some(exe) = exe else {
        return (
            lexical.unwrap_or_else(|| filename.to_string()),
            ProgramKind::Unnamed,
        );
    };
    if lexical.as_deref() == Some(exe) {
        return (exe.to_string(), ProgramKind::Binary);
    }
    let script =
        !fd_like && !filename.is_empty() && argv.iter().skip(1).take(2).any(|a| a == filename);
    match lexical {
        Some(l) if script => (l, ProgramKind::Script),
        _ => (exe.to_string(), ProgramKind::Binary),
    }
}
