//! Rego evaluation through regorus, with Witness semantics: legacy
//! (`deny[msg] { … }`) and v1 (`import rego.v1`, `deny contains msg if`)
//! modules in one engine, any package name, `data.<pkg>.deny` queried once
//! per distinct package (modules sharing a package merge), and `deny` must
//! be a set or array of strings.

use std::collections::BTreeSet;

use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

/// Default wall-clock limit of one Rego evaluation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default address-space limit of the evaluating process: 1 GiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;
/// The first argument that makes `cilock` a Rego evaluation child.
pub const CHILD_ARG: &str = "__cilock-rego-child";

/// Where Rego runs.
#[derive(Clone, Debug, Default)]
pub enum RegoRunner {
    /// In this process: the time limit is regorus's execution timer (checked
    /// between evaluation steps, not inside one builtin call); memory is
    /// not limited.
    #[default]
    InProcess,
    /// In a child process, `program args…` (which must call
    /// [`child_main`]), with `RLIMIT_AS` set to the memory limit, killed at
    /// the time limit.
    Child {
        /// The program (`/proc/self/exe` for the cilock CLI).
        program: PathBuf,
        /// Its arguments ([`CHILD_ARG`]).
        args: Vec<OsString>,
    },
}

/// Limits of one Rego evaluation (one attestation against the modules of
/// one required attestation type).
#[derive(Clone, Debug)]
pub struct RegoLimits {
    /// Wall-clock time.
    pub timeout: Duration,
    /// Address space of the evaluating process, bytes (child runner only).
    pub memory_bytes: u64,
    /// Where evaluation runs.
    pub runner: RegoRunner,
}

impl Default for RegoLimits {
    fn default() -> Self {
        RegoLimits {
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            runner: RegoRunner::InProcess,
        }
    }
}

impl RegoLimits {
    fn describe_time(&self) -> String {
        let ms = self.timeout.as_millis();
        if ms.is_multiple_of(1000) {
            format!("{} s", ms / 1000)
        } else {
            format!("{ms} ms")
        }
    }

    fn describe_memory(&self) -> String {
        format!("{} MiB", self.memory_bytes >> 20)
    }
}

/// One Rego module of a policy (`regopolicies[]`).
#[derive(Clone, Debug)]
pub struct RegoModule {
    /// The policy's name for the module.
    pub name: String,
    /// The Rego source.
    pub source: String,
}

/// A Rego problem that prevents evaluation (never a denial).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegoError {
    /// The module does not parse.
    #[error("rego module {name:?} does not compile: {detail}")]
    Compile {
        /// Module name.
        name: String,
        /// The parser's message.
        detail: String,
    },
    /// The module is not UTF-8 text.
    #[error("rego module {name:?} is not UTF-8 text")]
    NotText {
        /// Module name.
        name: String,
    },
    /// Evaluation failed (runtime error, bad input).
    #[error("evaluating {query}: {detail}")]
    Eval {
        /// The query.
        query: String,
        /// The engine's message.
        detail: String,
    },
    /// Evaluation went over a limit ([`RegoLimits`]) and was stopped.
    #[error("stopped: it exceeded the {what} limit of {limit}")]
    Limit {
        /// `time` or `memory`.
        what: &'static str,
        /// The limit, readable (`10 s`, `1024 MiB`).
        limit: String,
    },
    /// The evaluating child process failed in another way.
    #[error("the evaluating process failed: {0}")]
    Child(String),
    /// `deny` is missing or not a set/array of strings.
    #[error("{query} must be a set or array of strings, got {got}")]
    InvalidDeny {
        /// The query.
        query: String,
        /// What it evaluated to.
        got: String,
    },
}

/// A compiled set of Rego modules, ready to evaluate against inputs.
#[derive(Clone)]
pub struct CompiledRego {
    engine: Engine,
    packages: Vec<String>,
    modules: Vec<RegoModule>,
}

impl std::fmt::Debug for CompiledRego {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRego")
            .field("packages", &self.packages)
            .finish_non_exhaustive()
    }
}

impl CompiledRego {
    /// Parses every module into one engine (v0 unless a module imports
    /// `rego.v1`, as OPA's v0-compatible parser does).
    pub fn compile(modules: &[RegoModule]) -> Result<CompiledRego, RegoError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(true);
        let mut packages = BTreeSet::new();
        for (i, m) in modules.iter().enumerate() {
            let file = format!("{}#{}.rego", sanitize(&m.name), i);
            let pkg =
                engine
                    .add_policy(file, m.source.clone())
                    .map_err(|e| RegoError::Compile {
                        name: m.name.clone(),
                        detail: e.to_string(),
                    })?;
            packages.insert(pkg);
        }
        Ok(CompiledRego {
            engine,
            packages: packages.into_iter().collect(),
            modules: modules.to_vec(),
        })
    }

    /// The distinct packages (`data.…`).
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// Evaluates `data.<pkg>.deny` for every package with `input`; returns
    /// every deny message (empty: allowed). No limits: see
    /// [`CompiledRego::deny_limited`].
    pub fn deny(&self, input: &serde_json::Value) -> Result<Vec<String>, RegoError> {
        self.deny_in(self.engine.clone(), input)
    }

    /// [`CompiledRego::deny`] within `limits`: in a child process with an
    /// address-space limit and a wall-clock deadline
    /// ([`RegoRunner::Child`]), or in this process with regorus's execution
    /// timer only ([`RegoRunner::InProcess`]: time is checked between
    /// evaluation steps, memory is not bounded).
    pub fn deny_limited(
        &self,
        input: &serde_json::Value,
        limits: &RegoLimits,
    ) -> Result<Vec<String>, RegoError> {
        match &limits.runner {
            RegoRunner::InProcess => {
                let mut engine = self.engine.clone();
                engine.set_execution_timer_config(ExecutionTimerConfig {
                    limit: limits.timeout,
                    check_interval: NonZeroU32::MIN,
                });
                self.deny_in(engine, input).map_err(|e| match e {
                    RegoError::Eval { detail, .. } if detail.contains("exceeded time limit") => {
                        RegoError::Limit {
                            what: "time",
                            limit: limits.describe_time(),
                        }
                    }
                    other => other,
                })
            }
            RegoRunner::Child { program, args } => {
                child::run(program, args, &self.modules, input, limits)
            }
        }
    }

    fn deny_in(
        &self,
        mut engine: Engine,
        input: &serde_json::Value,
    ) -> Result<Vec<String>, RegoError> {
        let input_json = input.to_string();
        let value = Value::from_json_str(&input_json).map_err(|e| RegoError::Eval {
            query: "input".into(),
            detail: e.to_string(),
        })?;
        engine.set_input(value);
        let mut out = Vec::new();
        for pkg in &self.packages {
            let query = format!("{pkg}.deny");
            let v = engine
                .eval_rule(query.clone())
                .map_err(|e| RegoError::Eval {
                    query: query.clone(),
                    detail: e.to_string(),
                })?;
            let items: Vec<&Value> = match &v {
                Value::Set(s) => s.iter().collect(),
                Value::Array(a) => a.iter().collect(),
                other => {
                    return Err(RegoError::InvalidDeny {
                        query,
                        got: describe(other),
                    })
                }
            };
            for item in items {
                match item {
                    Value::String(s) => out.push(s.to_string()),
                    other => {
                        return Err(RegoError::InvalidDeny {
                            query,
                            got: format!("an element that is {}", describe(other)),
                        })
                    }
                }
            }
        }
        Ok(out)
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined (no `deny` rule)".into(),
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(_) => "a number".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Object(_) => "an object".into(),
        _ => "another value".into(),
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "module".into()
    } else {
        s
    }
}

/// The Rego evaluation child: [`child_main`] on the child's side,
/// [`child::run`] on the parent's.
mod child {
    use std::ffi::OsString;
    use std::io::{Read, Write};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Serialize};

    use super::{RegoError, RegoLimits, RegoModule};

    /// Largest reply read from a child (deny messages): 64 MiB.
    const MAX_REPLY: u64 = 64 << 20;
    /// Largest stderr kept from a child.
    const MAX_STDERR: u64 = 64 << 10;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Module {
        pub name: String,
        pub source: String,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Request {
        pub modules: Vec<Module>,
        pub input: serde_json::Value,
        pub timeout_ms: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) enum Reply {
        #[serde(rename = "deny")]
        Deny(Vec<String>),
        #[serde(rename = "error")]
        Error(String),
        #[serde(rename = "limit")]
        TimeLimit,
    }

    fn capped_reader<R: Read + Send + 'static>(r: R, max: u64) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut r = r.take(max);
            let _ = r.read_to_end(&mut buf);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(&mut r.into_inner(), &mut std::io::sink());
            buf
        })
    }

    pub(super) fn run(
        program: &Path,
        args: &[OsString],
        modules: &[RegoModule],
        input: &serde_json::Value,
        limits: &RegoLimits,
    ) -> Result<Vec<String>, RegoError> {
        let request = serde_json::to_vec(&Request {
            modules: modules
                .iter()
                .map(|m| Module {
                    name: m.name.clone(),
                    source: m.source.clone(),
                })
                .collect(),
            input: input.clone(),
            timeout_ms: limits.timeout.as_millis().min(u64::MAX as u128) as u64,
        })
        .map_err(|e| RegoError::Child(format!("encoding the request: {e}")))?;
        let mem = limits.memory_bytes;
        let cpu = limits.timeout.as_secs().saturating_add(2);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("CILOCK_LOG", "off");
        // SAFETY: only async-signal-safe calls (setrlimit, prctl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let as_limit = libc::rlimit {
                    rlim_cur: mem,
                    rlim_max: mem,
                };
                let cpu_limit = libc::rlimit {
                    rlim_cur: cpu,
                    rlim_max: cpu.saturating_add(1),
                };
                if libc::setrlimit(libc::RLIMIT_AS, &as_limit) != 0
                    || libc::setrlimit(libc::RLIMIT_CPU, &cpu_limit) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Never outlive the parent.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| RegoError::Child(format!("starting {}: {e}", program.display())))?;
        let mut stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(w) = stdin.as_mut() {
                // A child that dies early closes the pipe: not our error to report.
                let _ = w.write_all(&request);
            }
        });
        let out = capped_reader(child.stdout.take().expect("piped"), MAX_REPLY);
        let err = capped_reader(child.stderr.take().expect("piped"), MAX_STDERR);
        // The child's own timer stops interpreted loops at the limit; the
        // deadline (a little later) stops anything else, e.g. one builtin
        // call building a huge value.
        let deadline = limits.timeout + Duration::from_millis(250);
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if started.elapsed() >= deadline => {
                    let _ = child.kill();
                    killed = true;
                    match child.wait() {
                        Ok(st) => break st,
                        Err(e) => return Err(RegoError::Child(format!("waiting: {e}"))),
                    }
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    // Never leave it running (or a zombie) behind.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(RegoError::Child(format!("waiting: {e}")));
                }
            }
        };
        let _ = writer.join();
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        let time_limit = || RegoError::Limit {
            what: "time",
            limit: limits.describe_time(),
        };
        let memory_limit = || RegoError::Limit {
            what: "memory",
            limit: limits.describe_memory(),
        };
        if killed || status.signal() == Some(libc::SIGXCPU) {
            return Err(time_limit());
        }
        let stderr = String::from_utf8_lossy(&err);
        if !status.success()
            && (stderr.contains("memory allocation of") || stderr.contains("out of memory"))
        {
            return Err(memory_limit());
        }
        if status.success() {
            return match serde_json::from_slice::<Reply>(&out) {
                Ok(Reply::Deny(d)) => Ok(d),
                Ok(Reply::Error(e)) => Err(RegoError::Child(e)),
                Ok(Reply::TimeLimit) => Err(time_limit()),
                Err(e) => Err(RegoError::Child(format!("unreadable reply: {e}"))),
            };
        }
        // An allocation failure under RLIMIT_AS aborts (SIGABRT), or
        // faults when a stack or mapping cannot grow.
        if matches!(
            status.signal(),
            Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)
        ) {
            return Err(RegoError::Child(format!(
                "killed by signal {} (a stack overflow, or memory exhausted under the {} limit){}",
                status.signal().unwrap_or_default(),
                limits.describe_memory(),
                tail(&stderr)
            )));
        }
        Err(RegoError::Child(format!("{status}{}", tail(&stderr))))
    }

    fn tail(stderr: &str) -> String {
        let t = stderr.trim();
        if t.is_empty() {
            String::new()
        } else {
            let t: String = t
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!(": {t}")
        }
    }

    pub(super) fn serve() -> i32 {
        let mut bytes = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
            eprintln!("reading the request: {e}");
            return 2;
        }
        let reply = match serde_json::from_slice::<Request>(&bytes) {
            Err(e) => Reply::Error(format!("invalid request: {e}")),
            Ok(req) => {
                drop(bytes);
                let modules: Vec<RegoModule> = req
                    .modules
                    .into_iter()
                    .map(|m| RegoModule {
                        name: m.name,
                        source: m.source,
                    })
                    .collect();
                match super::CompiledRego::compile(&modules) {
                    Err(e) => Reply::Error(e.to_string()),
                    Ok(c) => {
                        let limits = RegoLimits {
                            timeout: Duration::from_millis(req.timeout_ms),
                            ..RegoLimits::default()
                        };
                        match c.deny_limited(&req.input, &limits) {
                            Ok(d) => Reply::Deny(d),
                            Err(RegoError::Limit { what: "time", .. }) => Reply::TimeLimit,
                            Err(e) => Reply::Error(e.to_string()),
                        }
                    }
                }
            }
        };
        let out = serde_json::to_vec(&reply).unwrap_or_default();
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(&out).and_then(|_| stdout.flush()).is_err() {
            return 2;
        }
        0
    }
}

/// The Rego evaluation child ([`RegoRunner::Child`]): reads one request on
/// standard input, writes the reply on standard output, returns the exit
/// status. A program calls it when its first argument is [`CHILD_ARG`].
pub fn child_main() -> i32 {
    child::serve()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(name: &str, src: &str) -> RegoModule {
        RegoModule {
            name: name.into(),
            source: src.into(),
        }
    }

    #[test]
    fn legacy_and_v1_merge_in_one_package() {
        let a = m(
            "a",
            "package cilock.verify\n\ndeny[msg] {\n  input.x == 1\n  msg := \"x is one\"\n}\n",
        );
        let b = m(
            "b",
            "package cilock.verify\nimport rego.v1\ndeny contains msg if {\n  input.y == 2\n  msg := sprintf(\"y is %d\", [input.y])\n}\n",
        );
        let c = m("c", "package other.pkg\ndeny[\"always\"] { true }\n");
        let r = CompiledRego::compile(&[a, b, c]).unwrap();
        assert_eq!(r.packages(), ["data.cilock.verify", "data.other.pkg"]);
        let mut d = r.deny(&json!({"x": 1, "y": 2})).unwrap();
        d.sort();
        assert_eq!(d, ["always", "x is one", "y is 2"]);
        let r2 = CompiledRego::compile(&[m(
            "a",
            "package p\ndeny[msg] { input.x == 1\n msg := \"no\" }\n",
        )])
        .unwrap();
        assert!(r2.deny(&json!({"x": 2})).unwrap().is_empty());
    }

    #[test]
    fn errors_are_distinct_from_denials() {
        assert!(matches!(
            CompiledRego::compile(&[m("bad", "package p\ndeny[msg] { ")]),
            Err(RegoError::Compile { .. })
        ));
        let r = CompiledRego::compile(&[m("num", "package p\ndeny := 5\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. })
        ));
        let r = CompiledRego::compile(&[m("nums", "package p\ndeny[x] { x := 5 }\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. })
        ));
        let r = CompiledRego::compile(&[m("arr", "package p\ndeny := [\"a\", \"b\"]\n")]).unwrap();
        assert_eq!(r.deny(&json!({})).unwrap(), ["a", "b"]);
        // No deny rule at all: an error too, never an empty (passing) set.
        let r = CompiledRego::compile(&[m("none", "package p\nallow := true\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. } | RegoError::Eval { .. })
        ));
    }
}
