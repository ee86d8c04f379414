//! Command-line arguments (parsed without I/O; commands resolve them).

use std::path::PathBuf;

use cilock_store::StoreUrl;
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
    /// Store signed envelopes in OCI registries (a blob, and a referrer of
    /// each subject digest).
    Push(PushArgs),
    /// Download the envelopes an OCI registry holds for an artifact.
    Pull(PullArgs),
    /// List the attestors `-a` accepts and the catalogue of tools whose
    /// outputs are attested when the trace sees them run.
    Attestors(AttestorsArgs),
    /// Check whether a traced step can run on this host.
    ///
    /// Says what each missing piece costs. Probes the kernel, BTF, tracefs, bpffs, the cgroup2 mount (hybrid or
    /// unified), the eBPF hook kinds (ring buffer, tracepoints, raw
    /// tracepoints, fexit, cgroup skb and sock programs: loaded for real as
    /// root, else read from the daemon's status), ptrace and seccomp, this
    /// process's groups against the socket's group, the socket, the signing
    /// key's permissions and the systemd service. Exit 0 when a traced step
    /// can run (the daemon answers, or root can trace with the embedded
    /// engine), 1 when not, 2 on a usage error.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) for cilock to standard output.
    ///
    /// Packages install them (bash:
    /// /usr/share/bash-completion/completions/cilock); to try one in the
    /// current bash: `source <(cilock completions bash)`.
    Completions(CompletionsArgs),
    /// Write the man pages (cilock.1 and cilock-SUBCOMMAND.1 for every
    /// subcommand, nested ones as cilock-step-begin.1) into DIR (packaging).
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

/// `cilock attestors`
#[derive(Debug, Args)]
pub struct AttestorsArgs {
    /// Print the built-in catalogue as JSON (its source format).
    #[arg(long)]
    pub json: bool,
}

/// `--store URL`: `oci://HOST[:PORT]/REPO` (HTTPS) or `oci+http://…`.
fn parse_store_url(s: &str) -> Result<StoreUrl, String> {
    s.parse::<StoreUrl>().map_err(|e| e.to_string())
}

/// `cilock push`
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Store to push to (repeatable): `oci://HOST[:PORT]/REPO` (HTTPS) or
    /// `oci+http://HOST[:PORT]/REPO` (plain HTTP). Credentials come from the
    /// Docker config ($DOCKER_CONFIG/config.json, else ~/.docker/config.json).
    #[arg(long = "store", value_name = "URL", required = true, value_parser = parse_store_url)]
    pub store: Vec<StoreUrl>,
    /// Signed envelopes (DSSE, JSON), each pushed byte for byte.
    #[arg(value_name = "ENVELOPE", required = true)]
    pub envelopes: Vec<PathBuf>,
}

/// `cilock pull`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("artifact").required(true).multiple(true).args(["subjects", "artifact_files"])))]
pub struct PullArgs {
    /// Store to search (repeatable), as for `cilock push`.
    #[arg(long = "store", value_name = "URL", required = true, value_parser = parse_store_url)]
    pub store: Vec<StoreUrl>,
    /// Subject digest to look for: ALG:HEX (sha256, sha512, sha1) or a bare
    /// sha256 (repeatable).
    #[arg(short = 's', long = "subjects", value_name = "DIGEST")]
    pub subjects: Vec<String>,
    /// Artifact file whose sha256 is a subject to look for (repeatable).
    #[arg(short = 'f', long = "artifactfile", value_name = "FILE")]
    pub artifact_files: Vec<PathBuf>,
    /// Existing directory the envelopes are written to, each as
    /// `<blob sha256 hex>.json`, byte for byte as stored.
    #[arg(short = 'o', long = "outdir", value_name = "DIR")]
    pub outdir: PathBuf,
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
    /// Once -o is written, push the envelope to this store as well
    /// (repeatable; `oci://HOST[:PORT]/REPO` or `oci+http://…`; credentials
    /// from your Docker config). A failed push exits 3 and keeps the
    /// envelope (see `cilock push`). Checked before the step ends.
    #[arg(long = "store", value_name = "URL", value_parser = parse_store_url)]
    pub store: Vec<StoreUrl>,
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
    /// Once -o is written, push the envelope to this store as well
    /// (repeatable; `oci://HOST[:PORT]/REPO` or `oci+http://…`; credentials
    /// from your Docker config). A failed push exits 3 unless the command
    /// failed (its status wins), and keeps the envelope (see `cilock
    /// push`). Checked before anything runs.
    #[arg(long = "store", value_name = "URL", value_parser = parse_store_url)]
    pub store: Vec<StoreUrl>,
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
    /// Attestation envelopes (repeatable; needed unless --store is given).
    #[arg(short = 'a', long = "attestations", required_unless_present = "store")]
    pub attestations: Vec<PathBuf>,
    /// Find the attestations in this store (repeatable): those of the
    /// artifact (-f/-s), then of their back-references (git commit, …),
    /// as with -a. A store that cannot be searched fails verification
    /// (exit 2).
    #[arg(long = "store", value_name = "URL", value_parser = parse_store_url)]
    pub store: Vec<StoreUrl>,
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
    /// `verifier.id` of the summary (a URI naming this verifier).
    #[arg(long, value_name = "URI", default_value = cilock_evidence::policy::verify::VSA_VERIFIER_ID)]
    pub vsa_verifier_id: String,
    /// A SLSA level the summary states when the policy passed
    /// (SLSA_<TRACK>_LEVEL_<0-4>, one per track; repeatable). Default:
    /// SLSA_BUILD_LEVEL_1 when a passing collection holds SLSA provenance
    /// (the slsa attestor), else SLSA_BUILD_LEVEL_0. A failed verification
    /// states FAILED.
    #[arg(long = "vsa-level", value_name = "LEVEL")]
    pub vsa_levels: Vec<String>,
    /// `resourceUri` of the summary (the artifact's URI; default
    /// `sha256:<first subject>`).
    #[arg(long, value_name = "URI")]
    pub vsa_resource_uri: Option<String>,
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

/// `cilock completions`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `cilock manpages`
#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// Directory the pages are written to (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `cilock doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print `{"ready", "summary", "checks": [{"name", "status", "detail", "cost"}]}`.
    #[arg(long)]
    pub json: bool,
    /// The daemon's socket (default: `CILOCK_SOCKET`, else the configuration's `socket`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The daemon's configuration, for its socket, group and key [default: /etc/cilock/cilock.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}
