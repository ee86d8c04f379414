//! A throw-away OCI registry: Debian's `docker-registry` (distribution
//! 2.8.2) on a free loopback port, its storage in its own temporary
//! directory, optionally behind htpasswd Basic auth (bcrypt entries made by
//! `htpasswd -Bbn`, package `apache2-utils`). Killed and removed on drop.
//!
//! Distribution 2.8 has no referrers API: tests against it exercise the
//! referrers tag schema.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage directory (filesystem driver root).
    pub root: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// A registry without authentication.
    pub fn start() -> Registry {
        Self::start_inner(None, false, None)
    }

    /// A registry in read-only maintenance mode: reads work, every write
    /// (blob upload, manifest PUT) is refused with distribution's error JSON.
    pub fn start_read_only() -> Registry {
        Self::start_inner(None, true, None)
    }

    /// A registry without authentication on `addr` (`127.0.0.1:PORT`: a
    /// test that needs the address before the registry runs).
    pub fn start_at(addr: &str) -> Registry {
        Self::start_inner(None, false, Some(addr))
    }

    /// A registry that requires Basic auth as `user`/`password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user, password)), false, None)
    }

    fn start_inner(auth: Option<(&str, &str)>, read_only: bool, at: Option<&str>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install the Debian package docker-registry (cargo xtask setup)"
        );
        let dir = crate::tempdir();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).expect("registry storage dir");
        let auth_yaml = match auth {
            None => String::new(),
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd (Debian package apache2-utils; cargo xtask setup)");
                assert!(out.status.success(), "htpasswd -Bbn failed: {out:?}");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: cilock-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let maintenance = if read_only {
            "  maintenance:\n    readonly:\n      enabled: true\n"
        } else {
            ""
        };
        // A free port can be taken between probing and binding: retry
        // (a given address: once).
        for _ in 0..if at.is_some() { 1 } else { 5 } {
            let addr = match at {
                Some(a) => a.to_string(),
                None => {
                    let port = TcpListener::bind("127.0.0.1:0")
                        .and_then(|l| l.local_addr())
                        .expect("free port")
                        .port();
                    format!("127.0.0.1:{port}")
                }
            };
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{maintenance}http:\n  addr: {addr}\n{auth_yaml}",
                    root.display()
                ),
            )
            .expect("write registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Some(status) = http_status(&addr, "GET", "/v2/") {
                    assert!(
                        status == 200 || status == 401,
                        "docker-registry answered /v2/ with {status}"
                    );
                    return Registry {
                        addr,
                        root,
                        dir,
                        child,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer on {addr}: {}",
                        std::fs::read_to_string(dir.path().join("registry.log"))
                            .unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "docker-registry did not start: {}",
            std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
        );
    }

    /// `oci+http://127.0.0.1:PORT/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!("oci+http://{}/{repo}", self.addr)
    }

    /// The data file of the blob `digest` (`sha256:<hex>`) as distribution's
    /// filesystem driver stores it (blobs are shared by all repositories).
    pub fn blob_path(&self, _repo: &str, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest ALG:HEX");
        self.root
            .join("docker/registry/v2/blobs")
            .join(alg)
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a plain HTTP/1.1 request to `addr`, or `None` if nothing
/// answers.
fn http_status(addr: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Writes `<dir>/config.json` with Basic credentials for `registry_addr`
/// (`auths[addr].auth` = base64 `user:password`, as `docker login` does).
pub fn docker_config_with_auth(dir: &Path, registry_addr: &str, user: &str, password: &str) {
    std::fs::create_dir_all(dir).expect("docker config dir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {registry_addr: {"auth": auth}}});
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).expect("json"),
    )
    .expect("write docker config.json");
}
