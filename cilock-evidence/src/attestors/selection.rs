//! Which attestors a step's trace calls for: the catalogue maps tools the
//! trace saw run (`cyclonedx-py`, `syft` → sbom; `ruff`, `semgrep` → sarif;
//! package managers → lockfiles; …) to the attestors that read their
//! outputs, so those are attested even without `-a`. `--no-auto-attestors`
//! turns this off.
//!
//! The catalogue is data, not code: `cilock-evidence/src/attestors/catalogue.json`
//! in the source tree, built into the binary and parsed once. Its format:
//!
//! ```json
//! {"version": 1, "entries": [
//!   {"name": "ruff", "tools": ["ruff"], "attestors": ["sarif"],
//!    "description": "Python linter (--output-format sarif)"},
//!   {"name": "python -m cyclonedx_py", "tools": ["python", "python3", "python3.*"],
//!    "module": "cyclonedx_py", "attestors": ["sbom"], "description": "…"}
//! ]}
//! ```
//!
//! - `tools`: program basenames; a trailing `*` matches any rest
//!   (`python3.*`). A traced process matches when the basename of its
//!   `program` (for a script: the script, e.g. a venv's `bin/cyclonedx-py`)
//!   or of any program it exec'd (`execs`) is one of them.
//! - `module` (optional): the process's command line also has `-m MODULE`
//!   (an interpreter running a module).
//! - `args` (optional): each of these is a whole argument of the command
//!   line (`docker save`).
//! - `argContains` (optional): some argument contains this text (eslint's
//!   SARIF formatter).
//! - `attestors`: post-product attestors (or `lockfiles`) to run.
//!
//! The command line is the command-run's `cmdline` (arguments joined by
//! one space), so arguments are split at spaces here: an argument holding a
//! space can match in part. An attestor the trace selected never fails the
//! step: when it finds nothing to record (no SBOM product, …) or fails, it
//! is listed in `trace.skippedAttestors` with the reason.
//!
//! Bounds: at most [`MAX_PROCESSES`] processes are looked at (the trace is
//! already bounded), [`MAX_EXECS`] programs each and the first
//! [`MAX_CMDLINE_BYTES`] of a command line; the first matching process is
//! kept per attestor.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::lifecycle::{POST_PRODUCT, PRE_MATERIAL};

/// An attestor chosen for a step, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectedAttestor {
    /// Attestor name.
    pub name: String,
    /// Why it ran: `requested` (`-a`), or which traced program called for
    /// it and which catalogue entry maps it.
    pub reason: String,
}

/// Reason recorded for an attestor requested with `-a`.
pub const REQUESTED: &str = "requested";

/// Processes of a trace looked at.
pub const MAX_PROCESSES: usize = 1 << 16;
/// Programs of one process looked at (its `execs`).
pub const MAX_EXECS: usize = 64;
/// Bytes of a command line looked at.
pub const MAX_CMDLINE_BYTES: usize = 64 << 10;
/// Longest program path quoted in a reason.
const MAX_REASON_PATH_CHARS: usize = 512;

/// The catalogue as built into the binary.
pub const CATALOGUE_JSON: &str = include_str!("catalogue.json");

/// The catalogue: tools mapped to attestors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Format version (1).
    pub version: u32,
    /// Entries, in order.
    pub entries: Vec<CatalogueEntry>,
}

/// One catalogue entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CatalogueEntry {
    /// Short name, quoted in reasons (`ruff`, `python -m cyclonedx_py`).
    pub name: String,
    /// Program basenames (a trailing `*` matches any rest).
    pub tools: Vec<String>,
    /// The command line has `-m MODULE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Whole arguments the command line has, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Text some argument contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg_contains: Option<String>,
    /// Attestors the tool calls for.
    pub attestors: Vec<String>,
    /// One line on the tool.
    pub description: String,
}

impl Catalogue {
    /// Parses and checks a catalogue: version 1, every entry named, with
    /// tools, and attestors the lifecycle can run after the step.
    pub fn parse(text: &str) -> Result<Catalogue, String> {
        let c: Catalogue =
            serde_json::from_str(text).map_err(|e| format!("attestor catalogue: {e}"))?;
        if c.version != 1 {
            return Err(format!(
                "attestor catalogue: version {} (expected 1)",
                c.version
            ));
        }
        for e in &c.entries {
            if e.name.trim().is_empty() || e.description.trim().is_empty() {
                return Err("attestor catalogue: an entry without a name or description".into());
            }
            if e.tools.is_empty() || e.tools.iter().any(|t| t.is_empty() || t.contains('/')) {
                return Err(format!(
                    "attestor catalogue: entry {:?}: tools must be non-empty basenames",
                    e.name
                ));
            }
            if e.attestors.is_empty() {
                return Err(format!(
                    "attestor catalogue: entry {:?} has no attestor",
                    e.name
                ));
            }
            for a in &e.attestors {
                if !POST_PRODUCT.contains(&a.as_str()) && !PRE_MATERIAL.contains(&a.as_str()) {
                    return Err(format!(
                        "attestor catalogue: entry {:?}: {a:?} is not an attestor the trace can select",
                        e.name
                    ));
                }
            }
        }
        Ok(c)
    }
}

/// The built-in catalogue (parsed once). Its validity is checked by a unit
/// test; should it ever not parse, nothing is selected.
pub fn catalogue() -> Result<&'static Catalogue, &'static str> {
    static C: OnceLock<Result<Catalogue, String>> = OnceLock::new();
    C.get_or_init(|| Catalogue::parse(CATALOGUE_JSON))
        .as_ref()
        .map_err(|e| e.as_str())
}

fn tool_matches(pattern: &str, base: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => base.starts_with(prefix),
        None => base == pattern,
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn cmdline_args(cmdline: &str) -> Vec<&str> {
    let mut end = cmdline.len().min(MAX_CMDLINE_BYTES);
    while !cmdline.is_char_boundary(end) {
        end -= 1;
    }
    cmdline[..end]
        .split(' ')
        .filter(|a| !a.is_empty())
        .collect()
}

impl CatalogueEntry {
    /// Whether a process running `programs` with `args` matches; returns
    /// the program that did.
    fn matches<'a>(&self, programs: &[&'a str], args: &[&str]) -> Option<&'a str> {
        let prog = programs.iter().copied().find(|p| {
            let b = basename(p);
            self.tools.iter().any(|t| tool_matches(t, b))
        })?;
        // Arguments after argv[0].
        let rest = args.get(1..).unwrap_or(&[]);
        if let Some(m) = &self.module {
            let has = rest.iter().enumerate().any(|(i, a)| {
                (*a == "-m" && rest.get(i + 1) == Some(&m.as_str()))
                    || a.strip_prefix("-m") == Some(m.as_str())
            });
            if !has {
                return None;
            }
        }
        if !self.args.iter().all(|w| rest.contains(&w.as_str())) {
            return None;
        }
        if let Some(t) = &self.arg_contains {
            if !rest.iter().any(|a| a.contains(t.as_str())) {
                return None;
            }
        }
        Some(prog)
    }
}

/// The attestors the trace in `command_run` (the command-run attestation's
/// JSON) calls for, one per attestor, in catalogue order.
pub fn select(command_run: Option<&serde_json::Value>) -> Vec<SelectedAttestor> {
    let Ok(cat) = catalogue() else {
        return Vec::new();
    };
    select_with(cat, command_run)
}

/// [`select`] with a given catalogue.
pub fn select_with(
    cat: &Catalogue,
    command_run: Option<&serde_json::Value>,
) -> Vec<SelectedAttestor> {
    let Some(procs) = command_run
        .and_then(|c| c.get("processes"))
        .and_then(|p| p.as_array())
    else {
        return Vec::new();
    };
    let wanted: usize = {
        let mut all: Vec<&str> = cat
            .entries
            .iter()
            .flat_map(|e| e.attestors.iter().map(|a| a.as_str()))
            .collect();
        all.sort();
        all.dedup();
        all.len()
    };
    // (attestor, reason), first match each.
    let mut found: Vec<(String, String)> = Vec::new();
    for p in procs.iter().take(MAX_PROCESSES) {
        if found.len() == wanted {
            break;
        }
        let mut programs: Vec<&str> = Vec::new();
        if let Some(s) = p.get("program").and_then(|v| v.as_str()) {
            programs.push(s);
        }
        if let Some(ex) = p.get("execs").and_then(|v| v.as_array()) {
            for s in ex.iter().take(MAX_EXECS).filter_map(|v| v.as_str()) {
                if !programs.contains(&s) {
                    programs.push(s);
                }
            }
        }
        if programs.is_empty() {
            continue;
        }
        let cmdline = p.get("cmdline").and_then(|v| v.as_str()).unwrap_or("");
        let args = cmdline_args(cmdline);
        for e in &cat.entries {
            if e.attestors
                .iter()
                .all(|a| found.iter().any(|(n, _)| n == a))
            {
                continue;
            }
            let Some(prog) = e.matches(&programs, &args) else {
                continue;
            };
            let prog = clip(prog, MAX_REASON_PATH_CHARS);
            for a in &e.attestors {
                if found.iter().any(|(n, _)| n == a) {
                    continue;
                }
                found.push((
                    a.clone(),
                    format!(
                        "the trace ran `{prog}` (catalogue: {} → {})",
                        e.name,
                        e.attestors.join(", ")
                    ),
                ));
            }
        }
    }
    let order = |name: &str| {
        cat.entries
            .iter()
            .position(|e| e.attestors.iter().any(|a| a == name))
            .unwrap_or(usize::MAX)
    };
    found.sort_by_key(|(n, _)| order(n));
    found
        .into_iter()
        .map(|(name, reason)| SelectedAttestor { name, reason })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_built_in_catalogue_parses_and_is_checked() {
        let c = catalogue().expect("the built-in catalogue must parse");
        assert!(c.entries.len() >= 30);
        // Every tool the issue names is in it.
        for t in [
            "cyclonedx-py",
            "syft",
            "trivy",
            "cdxgen",
            "spdx-sbom-generator",
            "ruff",
            "semgrep",
            "codeql",
            "bandit",
            "eslint",
            "gosec",
            "checkov",
            "npm",
            "yarn",
            "pnpm",
            "pip",
            "pip3",
            "uv",
            "poetry",
            "pipenv",
            "cargo",
            "go",
            "bundle",
            "composer",
            "pod",
            "gradle",
            "docker",
            "podman",
            "skopeo",
            "falco",
            "falcoctl",
            "kube-bench",
            "prowler",
            "testssl.sh",
            "testssl",
        ] {
            assert!(
                c.entries.iter().any(|e| e.tools.iter().any(|x| x == t)),
                "{t} missing"
            );
        }
    }

    #[test]
    fn malformed_catalogues_are_refused() {
        for (bad, why) in [
            ("{", "attestor catalogue"),
            (r#"{"version": 2, "entries": []}"#, "version 2"),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": ["x"], "attestors": ["nope"], "description": "d"}]}"#,
                "not an attestor",
            ),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": ["x"], "attestors": ["git"], "description": "d"}]}"#,
                "not an attestor",
            ),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": [], "attestors": ["sbom"], "description": "d"}]}"#,
                "basenames",
            ),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": ["/bin/x"], "attestors": ["sbom"], "description": "d"}]}"#,
                "basenames",
            ),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": ["x"], "attestors": [], "description": "d"}]}"#,
                "no attestor",
            ),
            (
                r#"{"version": 1, "entries": [{"name": "x", "tools": ["x"], "attestors": ["sbom"], "description": "d", "extra": 1}]}"#,
                "unknown field",
            ),
        ] {
            let e = Catalogue::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn run(procs: serde_json::Value) -> Vec<(String, String)> {
        select(Some(&json!({ "processes": procs })))
            .into_iter()
            .map(|s| (s.name, s.reason))
            .collect()
    }

    #[test]
    fn a_traced_ruff_and_a_venv_script_select_sarif_and_sbom() {
        // As a real trace records them: the script (shebang) is `program`.
        let got = run(json!([
            {"program": "/usr/bin/dash", "cmdline": "sh -c ruff check", "execs": ["/usr/bin/dash"]},
            {"program": "/venv/bin/ruff", "cmdline": "/venv/bin/ruff check --output-format sarif -o r.sarif x.py",
             "execs": ["/venv/bin/ruff"]},
            {"program": "/venv/bin/cyclonedx-py",
             "cmdline": "/venv/bin/python3 /venv/bin/cyclonedx-py environment -o bom.json",
             "execs": ["/venv/bin/cyclonedx-py"]},
            {"program": "/venv/bin/ruff", "cmdline": "ruff again"}
        ]));
        assert_eq!(
            got,
            vec![
                (
                    "sbom".to_string(),
                    "the trace ran `/venv/bin/cyclonedx-py` (catalogue: cyclonedx-py → sbom)"
                        .to_string()
                ),
                (
                    "sarif".to_string(),
                    "the trace ran `/venv/bin/ruff` (catalogue: ruff → sarif)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn conditions_on_arguments() {
        // python -m cyclonedx_py, not python -m other.
        assert_eq!(
            run(json!([{"program": "/usr/bin/python3.11", "cmdline": "python3 -m other"}])),
            vec![]
        );
        let got = run(json!([{"program": "/usr/bin/python3.11",
                               "cmdline": "python3 -m cyclonedx_py environment"}]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].1,
            "the trace ran `/usr/bin/python3.11` (catalogue: python -m cyclonedx_py → sbom)"
        );
        // docker save, not docker build.
        assert_eq!(
            run(json!([{"program": "/usr/bin/docker", "cmdline": "docker build ."}])),
            vec![]
        );
        assert_eq!(
            run(json!([{"program": "/usr/bin/docker", "cmdline": "docker save -o i.tar img"}]))[0]
                .0,
            "oci"
        );
        // eslint only with a SARIF formatter.
        assert_eq!(
            run(json!([{"program": "/n/eslint", "cmdline": "node /n/eslint ."}])),
            vec![]
        );
        assert_eq!(
            run(json!([{"program": "/n/eslint",
                        "cmdline": "node /n/eslint -f @microsoft/eslint-formatter-sarif ."}]))[0]
                .0,
            "sarif"
        );
        // The tool's name as an argument is not the tool.
        assert_eq!(
            run(json!([{"program": "/usr/bin/cat", "cmdline": "cat ruff syft"}])),
            vec![]
        );
    }

    #[test]
    fn one_entry_may_select_several_and_each_once() {
        let got = run(json!([
            {"program": "/usr/bin/trivy", "cmdline": "trivy fs --format sarif ."},
            {"program": "/usr/bin/syft", "cmdline": "syft ."},
            {"program": "/usr/bin/npm", "cmdline": "npm ci"}
        ]));
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sbom", "sarif", "lockfiles"]);
        assert!(got[0].1.contains("trivy → sbom, sarif"), "{}", got[0].1);
    }

    #[test]
    fn odd_input_selects_nothing_and_never_panics() {
        assert!(select(None).is_empty());
        assert!(select(Some(&json!({"processes": "x"}))).is_empty());
        assert!(select(Some(&json!({"processes": [1, null, {"program": 3}]}))).is_empty());
        let long = format!("ruff {}", "é".repeat(MAX_CMDLINE_BYTES));
        assert_eq!(
            run(json!([{"program": "/b/ruff", "cmdline": long}])).len(),
            1
        );
        let path = format!("/{}/ruff", "d".repeat(4000));
        let got = run(json!([{"program": path}]));
        assert!(got[0].1.chars().count() < 700, "reason clipped");
    }
}
