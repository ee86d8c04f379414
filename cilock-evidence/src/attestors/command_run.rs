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
    /// Set when the process moved itself (or was moved by a step process)
    /// out of the step's cgroup; it is not traced after that.
    #[serde(default, rename = "leftStep", skip_serializing_if = "is_false")]
    pub left_step: bool,
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
}
