//! Ground truth from an independent tool: what `strace -f` saw a command
//! do (files opened, programs executed, processes started).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::bin::tempdir;

/// What `strace -f` saw a command do.
#[derive(Debug, Default)]
pub struct StraceTruth {
    /// Files successfully opened (absolute, as `-y` printed them), with
    /// `/proc/<own pid>/` written `/proc/self/`, plus exec'd files.
    pub files: BTreeSet<String>,
    /// Programs successfully exec'd (canonical), with how many times.
    pub execs: BTreeMap<String, usize>,
    /// Number of processes (thread groups) seen.
    pub processes: usize,
}

/// Runs `cmd` (in `cwd`) under `strace -f` and parses what it did.
pub fn strace_truth(cmd: &[&str], cwd: &Path) -> StraceTruth {
    let dir = tempdir();
    let out_file = dir.path().join("strace.txt");
    let st = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-s",
            "4096",
            "-e",
            "trace=open,openat,openat2,creat,execve,execveat,clone,clone3,fork,vfork",
            "-o",
        ])
        .arg(&out_file)
        .args(cmd)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace (apt-get install strace)");
    assert!(st.success(), "strace run failed");
    parse_strace(&std::fs::read_to_string(&out_file).unwrap(), cwd)
}

fn parse_strace(text: &str, cwd: &Path) -> StraceTruth {
    let mut t = StraceTruth::default();
    // A process is the traced root or a fork/vfork/clone child that is not
    // a thread. Calls interleaved by other tasks come split in an
    // "<unfinished ...>" and a "<... NAME resumed>" line: remember the
    // first half per pid.
    let mut children = 0usize;
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let mut rest = rest.trim_start().to_string();
        if rest.ends_with("<unfinished ...>") {
            pending.insert(pid.to_string(), rest);
            continue;
        }
        if rest.starts_with("<... ") {
            let Some(first) = pending.remove(pid) else {
                continue;
            };
            let tail = rest.split_once("resumed>").map(|x| x.1).unwrap_or("");
            rest = format!("{}{}", first.trim_end_matches("<unfinished ...>"), tail);
        }
        let is_fork = ["clone(", "clone3(", "fork(", "vfork("]
            .iter()
            .any(|c| rest.starts_with(c));
        if is_fork {
            let ret = rest.rsplit("= ").next().unwrap_or("").trim();
            if ret.parse::<u32>().is_ok_and(|n| n > 0) && !rest.contains("CLONE_THREAD") {
                children += 1;
            }
            continue;
        }
        if rest.starts_with("execve(") || rest.starts_with("execveat(") {
            if !rest.trim_end().ends_with("= 0") {
                continue;
            }
            let Some(path) = rest.split('"').nth(1) else {
                continue;
            };
            let p = Path::new(path);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            };
            let canon = std::fs::canonicalize(&abs)
                .unwrap_or(abs)
                .display()
                .to_string();
            *t.execs.entry(canon.clone()).or_default() += 1;
            t.files.insert(canon);
            continue;
        }
        // openat(...) = 3</abs/path> or = 3</abs/path>(deleted)
        let Some(idx) = rest.rfind(" = ") else {
            continue;
        };
        let ret = &rest[idx + 3..];
        let Some(lt) = ret.find('<') else { continue };
        let Some(gt) = ret.rfind('>') else { continue };
        if gt <= lt {
            continue;
        }
        let mut path = ret[lt + 1..gt].to_string();
        let prefix = format!("/proc/{pid}/");
        if let Some(tail) = path.strip_prefix(&prefix) {
            path = format!("/proc/self/{tail}");
        }
        t.files.insert(path);
    }
    t.processes = 1 + children;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_lines() {
        let text = "100 execve(\"/bin/true\", [\"true\"], 0x7ff /* 3 vars */) = 0\n\
                    100 openat(AT_FDCWD, \"/etc/ld.so.cache\", O_RDONLY|O_CLOEXEC) = 3</etc/ld.so.cache>\n\
                    100 openat(AT_FDCWD, \"/proc/self/environ\", O_RDONLY) = 3</proc/100/environ>\n\
                    100 clone(child_stack=NULL, flags=CLONE_CHILD_SETTID|SIGCHLD) = 101\n\
                    100 clone3({flags=CLONE_VM|CLONE_THREAD, ...}, 88) = 102\n\
                    100 vfork( <unfinished ...>\n\
                    103 execve(\"/bin/true\", [\"true\"], 0x7ff /* 3 vars */ <unfinished ...>\n\
                    100 <... vfork resumed>) = 103\n\
                    103 <... execve resumed>) = 0\n\
                    101 openat(AT_FDCWD, \"x\", O_WRONLY|O_CREAT) = 4</tmp/x (deleted)>\n\
                    102 openat(AT_FDCWD, \"y\", O_RDONLY) = 5</tmp/y>\n";
        let t = parse_strace(text, Path::new("/"));
        assert!(t.files.contains("/etc/ld.so.cache"));
        assert!(t.files.contains("/proc/self/environ"));
        assert!(t.files.contains("/tmp/y"));
        assert_eq!(t.processes, 3);
        let truep = std::fs::canonicalize("/bin/true")
            .unwrap()
            .display()
            .to_string();
        assert_eq!(t.execs[&truep], 2);
    }
}
