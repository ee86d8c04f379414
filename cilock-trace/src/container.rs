//! Which container a cgroup is: the container id in a cgroup path below a
//! step's cgroup, as the runtimes name their cgroups.
//!
//! The path is data a job influences (a job may create cgroups named like
//! anything under its step): the result says only that the process ran in
//! a cgroup with that name under the step, which is what the evidence
//! states. Rules kept: only the first component (two for `buildkit/`) is
//! looked at; an id is exactly 64 lowercase hex digits; a BuildKit name is
//! 1–128 bytes of `[A-Za-z0-9_.-]`; anything else is no container.

/// The container id of a cgroup `rel` (relative to the step's cgroup, no
/// leading `/`): `<64 hex>` (Docker/runc with the cgroupfs driver),
/// `docker-<64 hex>.scope` (systemd driver), `libpod-<64 hex>` or
/// `libpod-<64 hex>.scope` (podman), `crio-<64 hex>.scope` and
/// `cri-containerd-<64 hex>.scope` (Kubernetes runtimes) → the hex id;
/// `buildkit/<name>` (a BuildKit RUN in the engine's window) →
/// `buildkit:<name>`. None for any other cgroup (the step's `shell` leaf,
/// `libpod-conmon-…`, a job's own sub-cgroups).
pub fn container_of_cgroup(rel: &str) -> Option<String> {
    let rel = rel.trim_start_matches('/');
    let mut parts = rel.split('/');
    let first = parts.next()?;
    if first == "buildkit" {
        let name = parts.next()?;
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && name != "."
            && name != "..";
        return ok.then(|| format!("buildkit:{name}"));
    }
    let id = [
        ("docker-", ".scope"),
        ("libpod-", ".scope"),
        ("libpod-", ""),
        ("crio-", ".scope"),
        ("cri-containerd-", ".scope"),
        ("", ""),
    ]
    .iter()
    .find_map(|(pre, suf)| {
        first
            .strip_prefix(pre)?
            .strip_suffix(suf)
            .filter(|id| is_id(id))
    })?;
    Some(id.to_string())
}

/// 64 lowercase hex digits: a full container id.
pub fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_names() {
        let id = "455b6dd7c8e1f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920";
        assert_eq!(id.len(), 64);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(container_of_cgroup(id), some(id));
        assert_eq!(container_of_cgroup(&format!("/{id}")), some(id));
        assert_eq!(container_of_cgroup(&format!("{id}/sub/x")), some(id));
        assert_eq!(container_of_cgroup(&format!("docker-{id}.scope")), some(id));
        assert_eq!(container_of_cgroup(&format!("libpod-{id}")), some(id));
        assert_eq!(container_of_cgroup(&format!("libpod-{id}.scope")), some(id));
        assert_eq!(container_of_cgroup(&format!("crio-{id}.scope")), some(id));
        assert_eq!(
            container_of_cgroup(&format!("cri-containerd-{id}.scope")),
            some(id)
        );
        assert_eq!(
            container_of_cgroup("buildkit/u5mrixvmmd8irvmgr87xtoq16"),
            some("buildkit:u5mrixvmmd8irvmgr87xtoq16")
        );
        assert_eq!(
            container_of_cgroup("buildkit/u5mrixvmmd8irvmgr87xtoq16/x"),
            some("buildkit:u5mrixvmmd8irvmgr87xtoq16")
        );
        // Not containers.
        for s in [
            "",
            "shell",
            "buildkit",
            "buildkit/",
            "buildkit/..",
            "buildkit/a b",
            &"b".repeat(200).replacen('b', "buildkit/", 1),
            &id[..63],
            &format!("{id}0"),
            &id.to_uppercase(),
            &format!("docker-{id}"),
            &format!("libpod-conmon-{id}"),
            &format!("x/{id}"),
            &format!("docker-{}.scope", &id[1..]),
        ] {
            assert_eq!(container_of_cgroup(s), None, "{s}");
        }
    }
}
