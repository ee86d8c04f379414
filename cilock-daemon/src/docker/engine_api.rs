//! Queries the proxy itself sends to the engine: its cgroup driver, and
//! what it says about a container it created and its image.
//!
//! Answers come from the engine (trusted as the engine, but bounded:
//! [`MAX_ANSWER`] bytes, [`MAX_LIST`] entries per list kept); every value
//! recorded from them is labelled in the evidence as the engine's.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

use super::ContainerMount;

/// Largest engine answer read, in bytes.
pub const MAX_ANSWER: usize = 4 << 20;
/// Most entries kept from one list (mounts, args, digests).
pub const MAX_LIST: usize = 256;
/// How long one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on the engine, parsed as JSON.
pub async fn get_json(engine: &Path, path: &str) -> Result<Value, String> {
    tokio::time::timeout(QUERY_TIMEOUT, get_json_inner(engine, path))
        .await
        .map_err(|_| format!("the engine did not answer GET {path} within {QUERY_TIMEOUT:?}"))?
}

async fn get_json_inner(engine: &Path, path: &str) -> Result<Value, String> {
    let stream = UnixStream::connect(engine)
        .await
        .map_err(|e| format!("connecting to {}: {e}", engine.display()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with the engine: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("GET {path}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "GET {path}: the engine answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

/// The engine's cgroup driver (`cgroupfs` or `systemd`), from `GET /info`.
pub async fn cgroup_driver(engine: &Path) -> Result<String, String> {
    let info = get_json(engine, "/info").await?;
    info.get("CgroupDriver")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "GET /info: no CgroupDriver in the engine's answer".into())
}

/// What the engine says about a container it created.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerFacts {
    /// Full id.
    pub id: String,
    /// Image id (`sha256:…`).
    pub image_id: String,
    /// Path + Args.
    pub cmd: Vec<String>,
    /// Mounts.
    pub mounts: Vec<ContainerMount>,
    /// HostConfig.CgroupParent as the engine stored it.
    pub cgroup_parent: String,
}

/// Reads `GET /containers/<id>/json`.
pub fn container_facts(v: &Value) -> ContainerFacts {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let mut cmd = Vec::new();
    if let Some(p) = v.get("Path").and_then(Value::as_str) {
        cmd.push(p.to_string());
    }
    if let Some(args) = v.get("Args").and_then(Value::as_array) {
        cmd.extend(
            args.iter()
                .take(MAX_LIST)
                .filter_map(Value::as_str)
                .map(str::to_string),
        );
    }
    let mounts = v
        .get("Mounts")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .take(MAX_LIST)
                .map(|m| ContainerMount {
                    kind: s(m.get("Type")),
                    source: s(m.get("Source")),
                    destination: s(m.get("Destination")),
                    read_only: m.get("RW").and_then(Value::as_bool) == Some(false),
                })
                .collect()
        })
        .unwrap_or_default();
    ContainerFacts {
        id: s(v.get("Id")),
        image_id: s(v.get("Image")),
        cmd,
        mounts,
        cgroup_parent: s(v.get("HostConfig").and_then(|h| h.get("CgroupParent"))),
    }
}

/// `RepoDigests` of `GET /images/<id>/json`.
pub fn image_digests(v: &Value) -> Vec<String> {
    v.get("RepoDigests")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .take(MAX_LIST)
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A container id as the engine prints it: 1 to 64 lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An image id safe in a path (`sha256:` + hex, or hex).
pub fn valid_image_id(id: &str) -> bool {
    valid_id(id.strip_prefix("sha256:").unwrap_or(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_an_inspect_answer() {
        // Cut from `GET /v1.41/containers/<id>/json` of dockerd 20.10 here.
        let v: Value = serde_json::from_str(
            r#"{"Id":"9c0c06a4aa","Path":"cat","Args":["/etc/hostname"],"Image":"sha256:d755",
                "HostConfig":{"CgroupParent":"/cilock.steps/s"},
                "Mounts":[{"Type":"bind","Source":"/tmp/a","Destination":"/a","Mode":"ro","RW":false},
                          {"Type":"volume","Name":"v","Source":"/var/lib/docker/volumes/v/_data","Destination":"/v","RW":true}]}"#,
        )
        .unwrap();
        let f = container_facts(&v);
        assert_eq!(f.id, "9c0c06a4aa");
        assert_eq!(f.cmd, vec!["cat", "/etc/hostname"]);
        assert_eq!(f.image_id, "sha256:d755");
        assert_eq!(f.cgroup_parent, "/cilock.steps/s");
        assert_eq!(
            f.mounts[0],
            ContainerMount {
                kind: "bind".into(),
                source: "/tmp/a".into(),
                destination: "/a".into(),
                read_only: true
            }
        );
        assert!(!f.mounts[1].read_only);
        assert_eq!(container_facts(&Value::Null), ContainerFacts::default());
        let img: Value =
            serde_json::from_str(r#"{"RepoDigests":["bb@sha256:01"],"Id":"sha256:d755"}"#).unwrap();
        assert_eq!(image_digests(&img), vec!["bb@sha256:01"]);
        assert!(valid_id("9c0c06a4aa"));
        assert!(!valid_id("../x"));
        assert!(valid_image_id("sha256:d755"));
        assert!(!valid_image_id("sha256:/x"));
    }
}
