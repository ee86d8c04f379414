//! Judging a test binary's output ([`judge`]) and the matrix report
//! ([`report`]): one column per kernel, one row per test.

use std::path::PathBuf;

use super::VmTestArgs;

/// Outcome of one test binary on one kernel.
#[derive(Clone, Debug)]
pub(super) struct TestResult {
    pub(super) test: String,
    pub(super) pass: bool,
    pub(super) detail: String,
    pub(super) secs: f64,
    pub(super) hook: String,
    /// Not run in this column (an `@systemd` test on the host): neither
    /// passed nor failed.
    pub(super) not_applicable: bool,
}

impl TestResult {
    pub(super) fn not_applicable(test: &str, why: &str) -> TestResult {
        TestResult {
            test: test.to_string(),
            pass: false,
            detail: why.to_string(),
            secs: 0.0,
            hook: String::new(),
            not_applicable: true,
        }
    }
}

/// Outcome of one matrix column.
#[derive(Debug)]
pub(super) struct Column {
    pub(super) name: String,
    pub(super) release: String,
    pub(super) results: Vec<TestResult>,
    /// Problems outside the tests (boot failure, timeout, kernel BUG).
    pub(super) problems: Vec<String>,
    pub(super) secs: f64,
    pub(super) logs: PathBuf,
}

impl Column {
    pub(super) fn pass(&self) -> bool {
        let run: Vec<&TestResult> = self.results.iter().filter(|r| !r.not_applicable).collect();
        self.problems.is_empty() && !run.is_empty() && run.iter().all(|r| r.pass)
    }
}

/// A test's result from its exit code and output.
pub(super) fn judge(name: &str, rc: i32, secs: f64, text: &str) -> TestResult {
    let hook = text
        .lines()
        .filter_map(|l| {
            l.split_once("CILOCK-HOOK file-open=")
                .map(|x| x.1.trim().to_string())
        })
        .next()
        .unwrap_or_default();
    let detail = if rc == 0 {
        summary_line(text).unwrap_or_default()
    } else if rc == 137 || rc == -1 {
        "killed (timeout)".to_string()
    } else {
        first_failure(text)
    };
    TestResult {
        test: name.to_string(),
        pass: rc == 0,
        detail,
        secs,
        hook,
        not_applicable: false,
    }
}

/// libtest's `test result: ...` line.
pub(super) fn summary_line(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("test result:"))
        .map(|l| l.trim_start_matches("test result: ").to_string())
}

/// The first failing test and its panic message, from libtest output.
pub(super) fn first_failure(text: &str) -> String {
    let failed: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("test ")
                .and_then(|r| r.strip_suffix(" ... FAILED"))
        })
        .collect();
    let panic = text
        .lines()
        .skip_while(|l| !l.contains("panicked at"))
        .nth(1)
        .map(|l| l.chars().take(240).collect::<String>())
        .unwrap_or_default();
    if failed.is_empty() {
        format!("failed: {}", panic)
    } else {
        format!("FAILED {}: {}", failed.join(", "), panic)
    }
}

pub(super) fn report(columns: &[Column], args: &VmTestArgs, build: f64, prep: f64, total: f64) {
    println!();
    println!(
        "kernel matrix{}:",
        match &args.inject_fault {
            Some(f) => format!(" (fault injected: {f})"),
            None => String::new(),
        }
    );
    for c in columns {
        println!(
            "  {:<12} {:<28} {}  ({:.1}s; logs {})",
            c.name,
            c.release,
            if c.pass() { "PASS" } else { "FAIL" },
            c.secs,
            c.logs.display()
        );
        for p in &c.problems {
            println!("      problem: {p}");
        }
        for r in &c.results {
            println!(
                "      {:<22} {}  {:>6.1}s  file-open={}  {}",
                r.test,
                if r.not_applicable {
                    "N/A "
                } else if r.pass {
                    "PASS"
                } else {
                    "FAIL"
                },
                r.secs,
                if r.hook.is_empty() { "?" } else { &r.hook },
                r.detail
            );
        }
    }
    println!("  time: build {build:.1}s, kernels/QEMU {prep:.1}s, total {total:.1}s");
}
