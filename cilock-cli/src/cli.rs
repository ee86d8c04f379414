//! Command-line arguments (parsed without I/O; commands resolve them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::attestor_flags::AttestorFlags;

/// cilock: signed evidence of what a CI step did, and policy verification.
#[derive(Debug, Parser)]
#[command(name = "cilock", version, about, long_about = None)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mark step boundaries around a CI job (through cilock-daemon).
    #[command(subcommand)]
    Step(StepCommand),
    /// Run one command traced, and write its signed attestation.
    Run(RunArgs),
    /// Verify attestations against a signed policy.
    Verify(VerifyArgs),
    /// Sign a file (a policy, or any payload) into a DSSE envelope.
    Sign(SignArgs),
    /// Generate a signing key pair.
    Keygen(KeygenArgs),
    /// Summarise an attestation envelope.
    Inspect(InspectArgs),
}

/// `cilock step …`
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; clap's derive wants the arguments inline"
)]
pub enum StepCommand {
    /// Start tracing a step: moves the calling shell (or --pid) into the
    /// step's cgroup, so everything it runs afterwards is traced.
    Begin(StepBeginArgs),
    /// Stop tracing a step and write its signed attestation.
    End(StepEndArgs),
    /// Write an ended step's attestation that the daemon still keeps
    /// (the step was ended by the daemon, or its output was never written).
    Fetch(StepFetchArgs),
}

/// `cilock step fetch`
#[derive(Debug, Args)]
pub struct StepFetchArgs {
    /// Step name: its newest kept attestation.
    #[arg(short = 's', long, required_unless_present_any = ["id", "list"])]
    pub step: Option<String>,
    /// A kept attestation's id (from `--list`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["step", "list"])]
    pub id: Option<String>,
    /// Where to write the signed attestation (DSSE envelope, JSON; `-` for standard output). Checked before anything is fetched.
    #[arg(short = 'o', long = "outfile", required_unless_present = "list")]
    pub outfile: Option<PathBuf>,
    /// List the kept attestations (of --step when given) instead.
    #[arg(long, conflicts_with = "outfile")]
    pub list: bool,
    /// Whose attestations (root only) [default: root's own, else the only
    /// user with a match; with --list, everyone's].
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
}

/// `cilock step begin`
#[derive(Debug, Args)]
pub struct StepBeginArgs {
    /// Step name (the attestation collection's name).
    #[arg(short = 's', long)]
    pub step: String,
    /// Process to trace with its descendants [default: the parent of cilock, i.e. the calling shell].
    #[arg(long)]
    pub pid: Option<u32>,
    /// Extra attestors to run (comma-separated or repeated): environment, git, github, github-action, gitlab, secretscan.
    #[arg(short = 'a', long = "attestations", value_delimiter = ',')]
    pub attestations: Vec<String>,
    /// Working directory whose files are recorded as materials and products [default: the current directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Attestor options.
    #[command(flatten)]
    pub attestor_flags: AttestorFlags,
}

/// `cilock step end`
#[derive(Debug, Args)]
pub struct StepEndArgs {
    /// Step name given to `step begin`.
    #[arg(short = 's', long)]
    pub step: String,
    /// Where to write the signed attestation (DSSE envelope, JSON; `-` for standard output). Checked before anything runs.
    #[arg(short = 'o', long = "outfile")]
    pub outfile: PathBuf,
    /// Kill processes still alive in the step (they are listed either way).
    #[arg(long)]
    pub kill: bool,
    /// Whose step (root only; needed when several users have a step of
    /// that name).
    #[arg(long, value_name = "UID")]
    pub owner: Option<u32>,
    /// The job's result as the caller reports it (e.g. `$?` of its last
    /// command). Recorded under command-run `claimed.exitcode`, apart from
    /// what the daemon observed.
    #[arg(long, value_name = "CODE", allow_negative_numbers = true)]
    pub exitcode: Option<i32>,
}

/// Which trace backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// eBPF when it loads, else ptrace.
    Auto,
    /// eBPF only (fail if unavailable).
    Ebpf,
    /// ptrace with a seccomp filter.
    Ptrace,
}

/// `cilock run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Step name (the attestation collection's name).
    #[arg(short = 's', long)]
    pub step: String,
    /// Where to write the signed attestation (DSSE envelope, JSON; `-` for standard output). Checked before anything runs.
    #[arg(short = 'o', long = "outfile")]
    pub outfile: PathBuf,
    /// Signing key (PEM). Without the daemon it signs the attestation;
    /// through the daemon it signs too, beside the daemon's own signature.
    #[arg(short = 'k', long = "key")]
    pub key: Option<PathBuf>,
    /// Trace backend when running without the daemon.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Do not use the daemon even if it answers.
    #[arg(long)]
    pub no_daemon: bool,
    /// Extra attestors to run (comma-separated or repeated).
    #[arg(short = 'a', long = "attestations", value_delimiter = ',')]
    pub attestations: Vec<String>,
    /// Working directory whose files are recorded as materials and products [default: the current directory].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Attestor options.
    #[command(flatten)]
    pub attestor_flags: AttestorFlags,
    /// After the command exits, wait at most this long for the processes it
    /// left running (daemons, background jobs): "30s", "2m", 0 = do not
    /// wait. Those still running are listed as aliveAtEnd (the ptrace
    /// backend kills them) [default: the daemon's run_wait_descendants;
    /// 30s without the daemon].
    #[arg(long = "wait-descendants", value_name = "DURATION", value_parser = parse_wait)]
    pub wait_descendants: Option<std::time::Duration>,
    /// After SIGINT/SIGTERM/SIGHUP was forwarded to the command, wait at
    /// most this long for it to exit before killing it (SIGKILL to its
    /// root, then every process left in the step). A second signal kills
    /// at once.
    #[arg(long = "kill-after", value_name = "DURATION", value_parser = parse_wait, default_value = "10s")]
    pub kill_after: std::time::Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    cilock_api::timefmt::parse_duration(s)
}

/// `cilock verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Signed policy (DSSE envelope).
    #[arg(short = 'p', long)]
    pub policy: PathBuf,
    /// Public key the policy must be signed by.
    #[arg(short = 'k', long = "publickey")]
    pub publickey: PathBuf,
    /// Attestation envelopes (repeatable).
    #[arg(short = 'a', long = "attestations", required = true)]
    pub attestations: Vec<PathBuf>,
    /// Artifact file whose sha256 is a subject to look for (repeatable).
    #[arg(short = 'f', long = "artifactfile")]
    pub artifact_files: Vec<PathBuf>,
    /// sha256 (hex) of a subject to look for (repeatable).
    #[arg(short = 's', long = "subjects")]
    pub subjects: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a signed SLSA verification summary here (needs --vsa-key).
    #[arg(long)]
    pub vsa_out: Option<PathBuf>,
    /// Key to sign the verification summary with.
    #[arg(long)]
    pub vsa_key: Option<PathBuf>,
    /// Wall-clock limit of each Rego evaluation (e.g. 10s, 500ms, 1m); a
    /// policy that exceeds it fails verification.
    #[arg(long = "rego-timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_rego_timeout)]
    pub rego_timeout: std::time::Duration,
    /// Memory (address space) limit of the process that evaluates Rego
    /// (e.g. 1G, 512M; at least 64M); a policy that exceeds it fails
    /// verification.
    #[arg(long = "rego-memory", value_name = "SIZE", default_value = "1G", value_parser = parse_rego_memory)]
    pub rego_memory: u64,
}

fn parse_rego_timeout(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let d = match t.strip_suffix("ms") {
        Some(ms) if !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()) => {
            std::time::Duration::from_millis(
                ms.parse().map_err(|_| format!("{s:?}: number too large"))?,
            )
        }
        _ => cilock_api::timefmt::parse_duration(t)?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: the limit must be more than zero"));
    }
    Ok(d)
}

fn parse_rego_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 1G, 512M or 1073741824"))?;
    let mult: u64 = match t[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M or G)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: size too large"))?;
    if v < 64 << 20 {
        return Err(format!(
            "{s:?}: at least 64M is needed to start the evaluating process"
        ));
    }
    Ok(v)
}

/// `cilock sign`
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Signing key (PEM).
    #[arg(short = 'k', long = "key")]
    pub key: PathBuf,
    /// File to sign.
    #[arg(short = 'f', long = "infile")]
    pub infile: PathBuf,
    /// Where to write the envelope.
    #[arg(short = 'o', long = "outfile")]
    pub outfile: PathBuf,
    /// Payload type.
    #[arg(
        short = 't',
        long = "datatype",
        default_value = "https://witness.testifysec.com/policy/v0.1"
    )]
    pub datatype: String,
    /// Certificate of the signing key (PEM or DER): the signature carries it, for `root` functionaries.
    #[arg(long = "certificate", alias = "signer-file-cert-path")]
    pub certificate: Option<PathBuf>,
    /// Intermediate certificates to carry with --certificate (comma-separated or repeated).
    #[arg(
        long = "intermediates",
        alias = "signer-file-intermediate-paths",
        value_delimiter = ',',
        requires = "certificate"
    )]
    pub intermediates: Vec<PathBuf>,
}

/// Key algorithms `keygen` can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 (default).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// `cilock keygen`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Private key output (PEM, mode 0600); the public key goes to OUT.pub.
    #[arg(short = 'o', long = "outfile")]
    pub outfile: PathBuf,
    /// Key algorithm.
    #[arg(short = 't', long = "type", value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
}

/// `cilock inspect`
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The envelope file.
    pub file: PathBuf,
    /// Public key to check the signature with.
    #[arg(short = 'k', long = "publickey")]
    pub publickey: Option<PathBuf>,
    /// Print the decoded statement as JSON.
    #[arg(long)]
    pub json: bool,
}
