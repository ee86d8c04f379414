//! The command-run attestation (`https://witness.dev/attestations/command-run/v0.1`):
//! the command, its output and exit code, and the trace of every process of
//! the step. Field names follow Witness (lowercase) and CI/lock's v0.1 inline
//! extensions (`network`, `syscallEvents`, `unhashedOpens`); cilock adds a
//! `trace` object describing how the trace was taken and what it may miss.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "command-run";

/// The command-run attestation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CommandRun {
    /// The command (empty for a step traced with begin/end).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Captured standard output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// Captured standard error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Exit code of the command (128+signal for a signal death).
    #[serde(default)]
    pub exitcode: i32,
    /// Every process of the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessInfo>,
    /// How the trace was taken (cilock extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceInfo>,
    /// What a client reported and the tracer did not observe (cilock
    /// extension): the command line it says it ran, the output it
    /// captured, the result it reports. Never copied into `cmd`, `stdout`,
    /// `stderr` or `exitcode`, which hold only what the tracer observed
    /// (see `trace.observed`). Omitted when nothing was claimed.
    #[serde(default, skip_serializing_if = "Claimed::is_empty")]
    pub claimed: Claimed,
    /// Containers the step created through the daemon's Docker API proxy,
    /// or whose processes the trace saw in the step (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Image builds the step ran through the proxy (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<ContainerBuild>,
}

/// A container the step created through the daemon's Docker API proxy, or
/// whose processes the trace saw in the step's cgroup (cilock extension).
/// What the engine answered is the engine's word (the daemon asked it);
/// `cgroup` and the processes listed with this `container` are what the
/// daemon observed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// The full container id, from the engine (or from the cgroup name for
    /// a container only the trace saw).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The engine: `docker` (empty when only the trace saw it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
    /// The image as the create request named it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_ref: String,
    /// The engine's image id (`sha256:…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// The image's repository digests (`RepoDigests`), from the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_digests: Vec<String>,
    /// `Path` + `Args` as the engine resolved them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// The container's mounts, from the engine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ContainerMount>,
    /// The cgroup it ran in (v2, relative to the cgroup2 root, leading `/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
    /// How it was tied to the step: `cgroup-parent` (the proxy placed it
    /// under the step's cgroup), `engine-window` (it ran while the step held
    /// the engine's build window), `none` (see `reason`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attribution: String,
    /// Why `attribution` is `none`; for a container the proxy did not
    /// record, that only the trace saw it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Pid of the client process that asked for it (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_by: u32,
    /// For a build's RUN container: the build's `id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build: String,
    /// Some process of it outlived the step.
    #[serde(default, skip_serializing_if = "is_false")]
    pub alive_at_end: bool,
}

/// One mount of a [`Container`], as the engine reported it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMount {
    /// `bind`, `volume`, `tmpfs`, ….
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The source (a host path for a bind, a volume's name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Where it is mounted in the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// An image build the step ran through the daemon's Docker API proxy
/// (cilock extension).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerBuild {
    /// `build-<n>`, unique in the step.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `classic` or `buildkit`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub builder: String,
    /// `cgroup-parent`, `engine-window` or `none` (see `reason`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attribution: String,
    /// Why `attribution` is `none`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The tags asked for (`t=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The Dockerfile asked for (`dockerfile=`, default `Dockerfile`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dockerfile: String,
    /// RUN container ids as the engine printed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// The built image's id, from the engine's stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// Pid of the client process that asked for it (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_by: u32,
}

/// A number left out of the JSON when it is 0 (`skip_serializing_if`).
fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// `exitcode` when the tracer did not see the command's root process exit
/// (a `step begin/end` whose shell was still running, an exit lost): never
/// a real exit status (0–255, 128+signal), so a rule requiring 0 fails.
/// The reason is in `trace.unobserved.exitcode`.
pub const EXITCODE_UNKNOWN: i32 = -1;

/// What a client reported about its command (`claimed` in command-run).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claimed {
    /// The command line the client says it ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Standard output the client says it captured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// Standard error the client says it captured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// The exit code (or job result) the client reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<i32>,
    /// The client says its run was interrupted by a signal (`cilock run`
    /// through the daemon: the daemon cannot see the signal the client got).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
    /// Bytes of output the client says it did not capture, per stream
    /// (`stdout`, `stderr`): its capture bound was reached.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub truncated: BTreeMap<String, u64>,
}

/// `cilock run` received a signal while the command ran (cilock
/// extension): it forwarded it to the command and then ended the step.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Interrupted {
    /// The signal's name (`SIGINT`, `SIGTERM`, `SIGHUP`).
    pub signal: String,
    /// The signal's number (cilock exits 128 + this).
    pub number: i32,
    /// True when cilock sent the signal to the command's root process;
    /// false when the signal came from the kernel (a terminal's Ctrl-C or
    /// hangup), which delivers it to the whole foreground process group,
    /// the command included.
    pub forwarded: bool,
    /// True when the command was killed (SIGKILL to its root, then every
    /// process left in the step): a second signal arrived, or the command
    /// outlived the grace period after the first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub killed: bool,
}

impl Claimed {
    /// Nothing was claimed.
    pub fn is_empty(&self) -> bool {
        self.cmd.is_empty()
            && self.stdout.is_empty()
            && self.stderr.is_empty()
            && self.exitcode.is_none()
            && self.interrupted.is_none()
            && self.truncated.is_empty()
    }
}

/// One process of the step.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    /// The executed file, absolute (for a script, the script).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program: String,
    /// Process id.
    #[serde(default)]
    pub processid: i64,
    /// Parent process id.
    #[serde(default)]
    pub parentpid: i64,
    /// Digest of `program`, given only when the file hashed is the one the
    /// process ran (for a script: the one its interpreter opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programdigest: Option<DigestSet>,
    /// Why `programdigest` is absent (cilock extension).
    #[serde(
        default,
        rename = "programUnhashedReason",
        skip_serializing_if = "String::is_empty"
    )]
    pub program_unhashed_reason: String,
    /// `comm` of the process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    /// Command line, arguments joined by one space.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// Digest of the binary the kernel ran (the interpreter for a script),
    /// given only when the file hashed has the identity the kernel recorded
    /// at exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exedigest: Option<DigestSet>,
    /// Why `exedigest` is absent (cilock extension).
    #[serde(
        default,
        rename = "exeUnhashedReason",
        skip_serializing_if = "String::is_empty"
    )]
    pub exe_unhashed_reason: String,
    /// Every file the process opened successfully: absolute path → digest.
    /// An empty digest set means the file could not be hashed (see
    /// `unhashedOpens` for why).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub openedfiles: BTreeMap<String, DigestSet>,
    /// Opened files without a trustworthy digest, and why.
    #[serde(
        default,
        rename = "unhashedOpens",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub unhashed_opens: Vec<UnhashedOpen>,
    /// Network activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Suspicious syscalls.
    #[serde(
        default,
        rename = "syscallEvents",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub syscall_events: Vec<SyscallEvent>,
    /// Exit code (128+signal for a signal death); absent while alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<i32>,
    /// Every program the process exec'd during the step, in order (`program`
    /// is the last; empty for a process that did not exec) (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub execs: Vec<String>,
    /// Set when the process was still running when the step ended.
    #[serde(default, rename = "aliveAtEnd", skip_serializing_if = "is_false")]
    pub alive_at_end: bool,
    /// Set when the process moved itself (or was moved by another process,
    /// or was created by a step process with `clone3(CLONE_INTO_CGROUP)`)
    /// out of the step's cgroup. On eBPF it is not traced after that; ptrace
    /// follows the process tree and keeps tracing it (see `limitations`).
    #[serde(default, rename = "leftStep", skip_serializing_if = "is_false")]
    pub left_step: bool,
    /// Set when the process came into this step from outside (moved into
    /// the step's cgroup, or created in it by a process outside the step),
    /// not by fork or exec of a step process, or when its origin is
    /// unknown: it is not one of the step's own.
    #[serde(default, rename = "joinedStep", skip_serializing_if = "is_false")]
    pub joined_step: bool,
    /// Where a `joinedStep` process came from, as observed.
    #[serde(
        default,
        rename = "joinedFrom",
        skip_serializing_if = "String::is_empty"
    )]
    pub joined_from: String,
    /// The id of the container the process ran in, from its cgroup (a
    /// BuildKit RUN: `buildkit:<exec id>`) (cilock extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// Inode of the process's mount namespace when it differs from the
    /// daemon's: its paths are as that namespace sees them (cilock
    /// extension).
    #[serde(default, rename = "mountNamespace", skip_serializing_if = "is_zero")]
    pub mount_namespace: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An opened file without a trustworthy digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnhashedOpen {
    /// The path.
    pub path: String,
    /// Why it has no digest.
    pub reason: String,
}

/// Network activity of a process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// connect/sendto/bind calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<NetworkConnection>,
    /// DNS queries.
    #[serde(default, rename = "dnsLookups", skip_serializing_if = "Vec::is_empty")]
    pub dns_lookups: Vec<DnsLookup>,
}

/// One connect/sendto/bind.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NetworkConnection {
    /// `connect`, `sendto`, `sendmsg`, `sendmmsg` or `bind`.
    pub syscall: String,
    /// `AF_INET`, `AF_INET6`, `AF_UNIX` or `AF_<n>`.
    pub family: String,
    /// Address (dotted IPv4, IPv6 text, or a Unix socket path).
    pub address: String,
    /// Port (absent for AF_UNIX).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The socket fd.
    #[serde(default)]
    pub fd: i64,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
    /// TLS server name sent on this connection.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// TLS ALPN protocols offered on this connection (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// The ClientHello was not captured whole (it is larger than what the
    /// backend captures of a stream, see `trace.limitations`): `hostname`
    /// comes from its first bytes, `alpn` may be incomplete or missing
    /// (cilock extension).
    #[serde(
        default,
        rename = "helloTruncated",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub hello_truncated: bool,
}

/// One DNS query.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DnsLookup {
    /// Server address.
    #[serde(rename = "serverAddress")]
    pub server_address: String,
    /// Server port.
    #[serde(rename = "serverPort")]
    pub server_port: u16,
    /// Queried name (cilock extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Query type: A, AAAA, TXT, … (cilock extension).
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub qtype: String,
    /// Transport: udp or tcp (cilock extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport: String,
    /// Answers seen (cilock extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
}

/// One suspicious syscall.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SyscallEvent {
    /// Syscall name (`ptrace`, `memfd_create`, …).
    pub syscall: String,
    /// Free text; do not write policy against it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Numeric arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<i64>,
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
    /// A path argument, where there is one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// How a trace was taken and how complete it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceInfo {
    /// `ebpf` or `ptrace`.
    pub backend: String,
    /// Why this backend was chosen (e.g. why eBPF was unavailable).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Hook used per concern (`file-open` → `tracepoint:syscalls/sys_exit_openat`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hooks: BTreeMap<String, String>,
    /// Per event kind: captured and lost.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, EventCount>,
    /// What this backend cannot see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limitations: Vec<String>,
    /// Kernel release the trace ran on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// True when the step was not ended by `step end` (see `endedBy`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub reaped: bool,
    /// What ended the step: `step end`, `run`, `timeout`, `idle` (no process
    /// left for the idle timeout) or `daemon shutdown`.
    #[serde(default, rename = "endedBy", skip_serializing_if = "String::is_empty")]
    pub ended_by: String,
    /// What a bound left out, by kind: events counted but not stored
    /// (`processes`, `files`, `argv`, `execs`, `syscallEvents`,
    /// `connections`, `dnsLookups`). Empty when nothing was left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub truncated: BTreeMap<String, u64>,
    /// Requested attestors that were not recorded, and why (outside their
    /// CI, or their helper process failed) (cilock extension).
    #[serde(
        default,
        rename = "skippedAttestors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub skipped_attestors: Vec<super::lifecycle::SkippedAttestor>,
    /// Attestors beyond command-run, material and product that ran, and
    /// why: `requested` (`-a`), or the traced program and catalogue entry
    /// that called for it.
    #[serde(
        default,
        rename = "selectedAttestors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub selected_attestors: Vec<super::selection::SelectedAttestor>,
    /// The top-level command-run fields (`cmd`, `exitcode`, `stdout`,
    /// `stderr`) whose values the tracer observed itself. A field not
    /// listed is empty (`exitcode`: [`EXITCODE_UNKNOWN`]); see `unobserved`
    /// for why, and `claimed` for what a client reported instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<String>,
    /// Why an observable field is unknown: field name → reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unobserved: BTreeMap<String, String>,
    /// `cilock run` (every mode): how the command's descendants were waited
    /// for after its root process exited (cilock extension). Absent for
    /// steps ended by `step end`, which does not wait.
    #[serde(
        default,
        rename = "waitDescendants",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait_descendants: Option<WaitDescendants>,
    /// `cilock run` without the daemon: the signal that interrupted the
    /// run, as the tracing process itself received it (observed). Through
    /// the daemon this is the client's word, under `claimed.interrupted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interrupted>,
    /// Processes killed when the step ended (`step end --kill`, or a step
    /// reaped at its timeout) (cilock extension). Absent when nothing was
    /// to be killed.
    #[serde(default, rename = "killAtEnd", skip_serializing_if = "Option::is_none")]
    pub kill_at_end: Option<KillAtEnd>,
}

/// Most pids listed in [`KillAtEnd::killed`].
pub const MAX_KILLED_LISTED: usize = 4096;

/// Who was killed at the end of a step, and who was spared.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KillAtEnd {
    /// What asked for the kill: `step end --kill` or `timeout`.
    pub requested_by: String,
    /// The process that asked, when it was inside the step (`step end
    /// --kill` from the job's own shell): it and its ancestors in the
    /// step were spared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<i64>,
    /// How: `cgroup.kill` (everything in the step's cgroup), or `frozen,
    /// pidfd SIGKILL` (the step's cgroup frozen, every process not spared
    /// killed through a pidfd, until only the spared were left), or
    /// `pidfd SIGKILL` (the same without a freezer).
    pub method: String,
    /// Pids killed (each is `aliveAtEnd`, with its signal exit code when
    /// the trace saw it die); at most [`MAX_KILLED_LISTED`], see
    /// `killedNotListed`.
    #[serde(default)]
    pub killed: Vec<i64>,
    /// Killed processes not listed in `killed` (over the bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub killed_not_listed: u64,
    /// Pids spared: the caller and its ancestors in the step. They were
    /// still running when the step ended (`aliveAtEnd`) and went back to
    /// the cgroup the step's first process came from, untraced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<i64>,
    /// False when processes other than the spared were still in the step
    /// after the bounded kill (they are left running, untraced).
    pub complete: bool,
}

/// How `cilock run` waited for the command's descendants.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaitDescendants {
    /// The bound on the wait (0: not waited).
    pub timeout_seconds: f64,
    /// How long the trace went on after the end was asked for (the root's
    /// exit), until every descendant was gone or the bound ran out.
    pub waited_seconds: f64,
    /// True when no process of the command was left.
    pub all_exited: bool,
    /// Pids still running when the wait ended (each is `aliveAtEnd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub survivors: Vec<i64>,
    /// What happened to the survivors: left running untraced (eBPF), or
    /// killed (ptrace run: a process under its seccomp filter cannot run
    /// untraced).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub survivors_fate: String,
}

/// Captured and lost events of one kind.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventCount {
    /// Events delivered to user space.
    pub captured: u64,
    /// Events the kernel could not deliver (ring buffer full).
    pub lost: u64,
}

impl TraceInfo {
    /// Total lost events over all kinds.
    pub fn total_lost(&self) -> u64 {
        self.events.values().map(|c| c.lost).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhashed_reasons_and_truncation_counts_are_named_and_optional() {
        let p = ProcessInfo {
            program: "/w/tool".into(),
            program_unhashed_reason: "replaced".into(),
            exe_unhashed_reason: "replaced".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["programUnhashedReason"], "replaced");
        assert_eq!(v["exeUnhashedReason"], "replaced");
        assert!(v.get("programdigest").is_none());
        let plain = serde_json::to_value(ProcessInfo::default()).unwrap();
        assert!(plain.get("programUnhashedReason").is_none());
        let mut t = TraceInfo::default();
        assert!(serde_json::to_value(&t).unwrap().get("truncated").is_none());
        t.truncated.insert("processes".into(), 3);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["truncated"]["processes"], 3);
        let back: TraceInfo = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn claimed_is_apart_camel_case_and_omitted_when_empty() {
        let mut run = CommandRun {
            exitcode: 3,
            ..Default::default()
        };
        let v = serde_json::to_value(&run).unwrap();
        assert!(v.get("claimed").is_none(), "{v}");
        assert_eq!(v["exitcode"], 3);
        run.claimed = Claimed {
            cmd: vec!["make".into(), "test".into()],
            stdout: "All 412 tests passed\n".into(),
            stderr: String::new(),
            exitcode: Some(0),
            ..Default::default()
        };
        let mut t = TraceInfo {
            observed: vec!["cmd".into(), "exitcode".into()],
            ..Default::default()
        };
        t.unobserved
            .insert("stdout".into(), "captured by the client".into());
        run.trace = Some(t);
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(
            v["claimed"],
            serde_json::json!({"cmd": ["make", "test"], "stdout": "All 412 tests passed\n", "exitcode": 0})
        );
        // The observed fields keep the Witness shape: cmd a list, exitcode an int.
        assert_eq!(v["exitcode"], 3);
        assert_eq!(v["cmd"], serde_json::json!([]));
        assert!(v.get("stdout").is_none());
        assert_eq!(
            v["trace"]["observed"],
            serde_json::json!(["cmd", "exitcode"])
        );
        assert_eq!(v["trace"]["unobserved"]["stdout"], "captured by the client");
        let back: CommandRun = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back.claimed, run.claimed);
        // A claim of 0 alone is still a claim.
        let only = Claimed {
            exitcode: Some(0),
            ..Default::default()
        };
        assert!(!only.is_empty());
        // Witness's reader (cmd, stdout, stderr, exitcode; unknown fields
        // ignored) sees only the observed values.
        #[derive(Deserialize)]
        struct WitnessCommandRun {
            cmd: Vec<String>,
            #[serde(default)]
            stdout: String,
            exitcode: i32,
        }
        let w: WitnessCommandRun = serde_json::from_value(v).unwrap();
        assert_eq!((w.cmd.len(), w.stdout.as_str(), w.exitcode), (0, "", 3));
        const { assert!(EXITCODE_UNKNOWN < 0) };
    }

    #[test]
    fn containers_builds_and_process_container_round_trip_with_their_names() {
        let run = CommandRun {
            containers: vec![Container {
                id: "a".repeat(64),
                engine: "docker".into(),
                image_ref: "bb:local".into(),
                image_id: format!("sha256:{}", "b".repeat(64)),
                image_digests: vec![format!("bb@sha256:{}", "c".repeat(64))],
                cmd: vec!["cat".into(), "/in/f".into()],
                mounts: vec![ContainerMount {
                    kind: "bind".into(),
                    source: "/w".into(),
                    destination: "/in".into(),
                    read_only: true,
                }],
                cgroup: format!("/cilock.steps/u0.s.1/{}", "a".repeat(64)),
                attribution: "cgroup-parent".into(),
                reason: String::new(),
                created_by: 4242,
                build: "build-1".into(),
                alive_at_end: true,
            }],
            builds: vec![ContainerBuild {
                id: "build-1".into(),
                builder: "classic".into(),
                attribution: "none".into(),
                reason: "engine down".into(),
                tags: vec!["x:1".into()],
                dockerfile: "Dockerfile".into(),
                containers: vec!["0123456789ab".into()],
                image_id: "sha256:dd".into(),
                created_by: 7,
            }],
            processes: vec![ProcessInfo {
                processid: 9,
                container: "buildkit:u5mrixvmmd8irvmgr87xtoq16".into(),
                mount_namespace: 4026532801,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&run).unwrap();
        let c = &v["containers"][0];
        assert_eq!(c["imageRef"], "bb:local");
        assert_eq!(
            c["imageDigests"][0],
            format!("bb@sha256:{}", "c".repeat(64))
        );
        assert_eq!(c["createdBy"], 4242);
        assert_eq!(c["aliveAtEnd"], true);
        assert_eq!(c["build"], "build-1");
        assert!(c.get("reason").is_none(), "{c}");
        assert_eq!(
            c["mounts"][0],
            serde_json::json!({"type": "bind", "source": "/w", "destination": "/in", "readOnly": true})
        );
        let b = &v["builds"][0];
        assert_eq!(b["builder"], "classic");
        assert_eq!(b["attribution"], "none");
        assert_eq!(b["reason"], "engine down");
        assert_eq!(b["imageId"], "sha256:dd");
        assert_eq!(b["createdBy"], 7);
        assert_eq!(b["containers"][0], "0123456789ab");
        let p = &v["processes"][0];
        assert_eq!(p["container"], "buildkit:u5mrixvmmd8irvmgr87xtoq16");
        assert_eq!(p["mountNamespace"], 4026532801u64);
        let back: CommandRun = serde_json::from_value(v).unwrap();
        assert_eq!(back.containers, run.containers);
        assert_eq!(back.builds, run.builds);
        assert_eq!(back.processes, run.processes);
        // Empty values are omitted: an attestation without containers keeps its shape.
        let plain = serde_json::to_value(CommandRun::default()).unwrap();
        assert!(plain.get("containers").is_none() && plain.get("builds").is_none());
        let p = serde_json::to_value(ProcessInfo::default()).unwrap();
        assert!(p.get("container").is_none() && p.get("mountNamespace").is_none());
        let c = serde_json::to_value(Container::default()).unwrap();
        assert_eq!(c, serde_json::json!({}));
        let b = serde_json::to_value(ContainerBuild::default()).unwrap();
        assert_eq!(b, serde_json::json!({}));
    }
}
