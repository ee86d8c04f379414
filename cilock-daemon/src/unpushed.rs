//! The daemon's pushes to the OCI registries of its configuration
//! (`store = [URL, …]`), and the envelopes it could not push yet.
//!
//! Every envelope the daemon signs (`step end`, `run` through the daemon,
//! and the steps it ends itself: idle, timeout, shutdown, restart) is
//! pushed to every configured store, with the daemon's own credentials
//! (`store_docker_config`, else `$DOCKER_CONFIG`, else root's
//! `~/.docker/config.json`), each push bounded by `store_timeout`, before
//! the client gets its reply; the client is told what happened
//! ([`cilock_api::StoreOutcome`]). The daemon pushes only to the URLs of
//! its own configuration, never to one a client names.
//!
//! Before the first push the envelope is written to
//! `<state_dir>/unpushed/<id>.json`, with `<id>.meta` listing the stores it
//! still has to reach (directory 0700, files 0600, root's): a daemon that
//! dies mid-push retries at its next start. A push that succeeded to every
//! store deletes both files; one that failed leaves them, and the daemon
//! retries in the background (at start, then every `store_retry`), deleting
//! them once every store has the envelope. Bounds: at most
//! [`MAX_UNPUSHED`] envelopes and [`MAX_UNPUSHED_BYTES`] bytes; beyond them
//! the oldest are deleted, each with a warning in the log (the envelope is
//! also in the client's file, or kept in `<state_dir>/kept/`).

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cilock_api::StoreOutcome;
use cilock_store::{Store, StoreOptions, StoreUrl};
use serde::{Deserialize, Serialize};

/// Envelopes waiting for a retry, at most.
pub const MAX_UNPUSHED: usize = 1000;
/// Bytes of envelopes waiting for a retry, at most (one larger envelope
/// is still kept, alone).
pub const MAX_UNPUSHED_BYTES: u64 = 4 << 30;
/// Default of `store_timeout`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `store_retry`.
pub const DEFAULT_STORE_RETRY: Duration = Duration::from_secs(300);

/// The stores of the daemon's configuration.
#[derive(Clone, Debug, Default)]
pub struct StoreSettings {
    /// Where every signed envelope is pushed.
    pub urls: Vec<StoreUrl>,
    /// Bound on each push (and on each request of it).
    pub timeout: Duration,
    /// The Docker config directory with the daemon's credentials
    /// (`None`: `$DOCKER_CONFIG`, else root's `~/.docker`).
    pub docker_config: Option<PathBuf>,
    /// How often unpushed envelopes are retried.
    pub retry_every: Duration,
}

/// What is recorded beside an unpushed envelope.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    step: String,
    owner_uid: u32,
    /// The stores it has not reached yet.
    stores: Vec<String>,
    /// When it was first written (seconds since the epoch).
    #[serde(default)]
    since: u64,
}

/// The pusher (see the [module docs](self)).
#[derive(Debug)]
pub struct Pusher {
    settings: StoreSettings,
    dir: PathBuf,
    seq: AtomicU64,
    /// Ids a push or a retry is working on (skipped by the others).
    busy: Mutex<HashSet<String>>,
    /// Serialises writes and pruning of the directory.
    lock: Mutex<()>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Pusher {
    /// The pusher of `settings`, keeping envelopes in `<state_dir>/unpushed`.
    pub fn new(state_dir: &Path, settings: StoreSettings) -> Pusher {
        Pusher {
            settings,
            dir: state_dir.join("unpushed"),
            seq: AtomicU64::new(0),
            busy: Mutex::new(HashSet::new()),
            lock: Mutex::new(()),
        }
    }

    /// True when stores are configured.
    pub fn enabled(&self) -> bool {
        !self.settings.urls.is_empty()
    }

    /// `<state_dir>/unpushed`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How often [`Pusher::retry`] should run.
    pub fn retry_every(&self) -> Duration {
        self.settings.retry_every
    }

    fn options(&self) -> StoreOptions {
        StoreOptions {
            docker_config: self.settings.docker_config.clone(),
            timeout: self.settings.timeout,
            ..StoreOptions::default()
        }
    }

    /// Pushes `bytes` (a signed envelope of `owner_uid`'s step `step`) to
    /// every configured store; what failed stays in `unpushed/` for the
    /// retries. One outcome per store (none without stores).
    pub fn push(&self, owner_uid: u32, step: &str, bytes: &[u8]) -> Vec<StoreOutcome> {
        if !self.enabled() {
            return Vec::new();
        }
        let id = self.new_id(owner_uid, step);
        self.mark_busy(&id, true);
        let meta = Meta {
            step: step.to_string(),
            owner_uid,
            stores: self.settings.urls.iter().map(ToString::to_string).collect(),
            since: now_secs(),
        };
        let saved = match self.save(&id, &meta, bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(step, uid = owner_uid, dir = %self.dir.display(), "cannot keep the envelope for store retries (pushing it anyway): {e}");
                None
            }
        };
        let results = self.push_to(&self.settings.urls, bytes);
        let failed: Vec<String> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(u, _)| u.to_string())
            .collect();
        let mut outcomes = Vec::new();
        for (url, r) in results {
            match r {
                Ok(detail) => {
                    tracing::info!(step, uid = owner_uid, store = %url, "attestation stored: {detail}");
                    outcomes.push(StoreOutcome {
                        url: url.to_string(),
                        ok: true,
                        detail,
                    });
                }
                Err(why) => {
                    let kept = match &saved {
                        Some(p) => format!(
                            "; the daemon keeps the envelope ({}) and retries every {}",
                            p.display(),
                            secs(self.settings.retry_every)
                        ),
                        None => "; the daemon could not keep a copy for retries (see its log)"
                            .to_string(),
                    };
                    tracing::warn!(step, uid = owner_uid, store = %url, "attestation not stored: {why}{kept}");
                    outcomes.push(StoreOutcome {
                        url: url.to_string(),
                        ok: false,
                        detail: format!("{why}{kept}"),
                    });
                }
            }
        }
        if saved.is_some() {
            if failed.is_empty() {
                self.remove(&id);
            } else if failed.len() < meta.stores.len() {
                let m = Meta {
                    stores: failed,
                    ..meta
                };
                if let Err(e) = self.write_meta(&id, &m) {
                    tracing::warn!(id, "cannot update the stores left to reach: {e}");
                }
            }
        }
        self.mark_busy(&id, false);
        outcomes
    }

    /// One push per url, all at once, each bounded by `store_timeout` (so
    /// the whole is too, however many stores: a slow registry holds the
    /// caller for one timeout, not one per store), in a thread of its own
    /// (callable from any context, async or not). The thread is the
    /// caller's: at most one per push waiting for its answer, so as many as
    /// the server's connections (bounded) plus the daemon's own endings.
    fn push_to(&self, urls: &[StoreUrl], bytes: &[u8]) -> Vec<(StoreUrl, Result<String, String>)> {
        let opts = self.options();
        let timeout = self.settings.timeout;
        let failed = |why: &str| {
            urls.iter()
                .map(|u| (u.clone(), Err(why.to_string())))
                .collect()
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return failed(&format!("cannot start a runtime: {e}")),
                };
                let bytes: std::sync::Arc<[u8]> = bytes.into();
                rt.block_on(async {
                    let mut results: Vec<Option<Result<String, String>>> = vec![None; urls.len()];
                    let mut set = tokio::task::JoinSet::new();
                    for (i, u) in urls.iter().enumerate() {
                        match Store::open(u.clone(), opts.clone()) {
                            Err(e) => results[i] = Some(Err(e.to_string())),
                            Ok(st) => {
                                let bytes = bytes.clone();
                                set.spawn(async move {
                                    (i, tokio::time::timeout(timeout, st.push(&bytes)).await)
                                });
                            }
                        }
                    }
                    while let Some(joined) = set.join_next().await {
                        let Ok((i, r)) = joined else { continue };
                        results[i] = Some(match r {
                            Ok(Ok(r)) => Ok(format!(
                                "blob {}; {} referrer(s){}",
                                r.blob,
                                r.referrers.len(),
                                if r.skipped.is_empty() {
                                    String::new()
                                } else {
                                    format!("; {} subject(s) skipped", r.skipped.len())
                                }
                            )),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!(
                                "no answer within store_timeout ({})",
                                secs(timeout)
                            )),
                        });
                    }
                    urls.iter()
                        .zip(results)
                        .map(|(u, r)| {
                            (
                                u.clone(),
                                r.unwrap_or_else(|| Err("the push panicked".to_string())),
                            )
                        })
                        .collect()
                })
            })
            .join()
            .unwrap_or_else(|_| failed("the push panicked"))
        })
    }

    /// Retries every unpushed envelope (oldest first) to the stores it has
    /// not reached that are still configured; deletes it once none is left.
    /// A store that fails is not tried again in the same sweep.
    pub fn retry(&self) {
        if !self.enabled() {
            return;
        }
        let mut down: HashSet<String> = HashSet::new();
        for (id, _) in self.list() {
            if !self.mark_busy(&id, true) {
                continue;
            }
            self.retry_one(&id, &mut down);
            self.mark_busy(&id, false);
        }
    }

    fn retry_one(&self, id: &str, down: &mut HashSet<String>) {
        let Some(meta) = self.read_meta(id) else {
            tracing::warn!(id, dir = %self.dir.display(), "unpushed envelope without a readable .meta: left for an administrator");
            return;
        };
        let bytes = match crate::kept::read_bounded(
            &self.dir.join(format!("{id}.json")),
            cilock_evidence::limits::MAX_ENVELOPE_BYTES,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(id, "cannot read the unpushed envelope: {e}");
                return;
            }
        };
        let urls: Vec<StoreUrl> = self
            .settings
            .urls
            .iter()
            .filter(|u| {
                let s = u.to_string();
                meta.stores.contains(&s) && !down.contains(&s)
            })
            .cloned()
            .collect();
        if urls.is_empty() {
            return;
        }
        let mut left: Vec<String> = meta.stores.clone();
        for (url, r) in self.push_to(&urls, &bytes) {
            let u = url.to_string();
            match r {
                Ok(detail) => {
                    tracing::info!(id, step = %meta.step, uid = meta.owner_uid, store = %u, "retry: attestation stored: {detail}");
                    left.retain(|x| x != &u);
                }
                Err(why) => {
                    tracing::warn!(id, step = %meta.step, uid = meta.owner_uid, store = %u, "retry: attestation still not stored: {why}");
                    down.insert(u);
                }
            }
        }
        // Stores no longer configured are not pushed to (and not waited for).
        left.retain(|x| self.settings.urls.iter().any(|u| &u.to_string() == x));
        if left.is_empty() {
            self.remove(id);
            tracing::info!(id, step = %meta.step, "every store has the attestation: unpushed copy deleted");
        } else if left.len() < meta.stores.len() {
            let m = Meta {
                stores: left,
                ..meta
            };
            if let Err(e) = self.write_meta(id, &m) {
                tracing::warn!(id, "cannot update the stores left to reach: {e}");
            }
        }
    }

    /// Marks `id` busy (`true`: false when it already was) or free.
    fn mark_busy(&self, id: &str, busy: bool) -> bool {
        let mut g = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if busy {
            g.insert(id.to_string())
        } else {
            g.remove(id)
        }
    }

    fn new_id(&self, owner_uid: u32, step: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let safe: String = step
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .take(128)
            .collect();
        format!("{nanos:020}.{n}.{owner_uid}.{safe}")
    }

    /// Writes the envelope and its meta; then applies the bounds.
    fn save(&self, id: &str, meta: &Meta, bytes: &[u8]) -> io::Result<PathBuf> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(parent) = self.dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        crate::kept::KeptStore::ensure_dir(&self.dir)?;
        let meta_bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
        crate::kept::write_new(&self.dir, &format!("{id}.meta"), &meta_bytes)?;
        if let Err(e) = crate::kept::write_new(&self.dir, &format!("{id}.json"), bytes) {
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.meta")));
            return Err(e);
        }
        self.prune(id);
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn write_meta(&self, id: &str, meta: &Meta) -> io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let b = serde_json::to_vec(meta).map_err(io::Error::other)?;
        crate::kept::write_file(&self.dir, &format!("{id}.meta"), &b, true)
    }

    fn read_meta(&self, id: &str) -> Option<Meta> {
        let p = self.dir.join(format!("{id}.meta"));
        let b = crate::kept::read_bounded(&p, crate::kept::MAX_META).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn remove(&self, id: &str) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.meta")));
    }

    /// The unpushed envelopes (id, bytes), oldest first (ids start with
    /// their time).
    pub fn list(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?.to_string();
                if id.starts_with('.') {
                    return None;
                }
                let md = e.metadata().ok()?;
                md.is_file().then_some((id, md.len()))
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes the oldest envelopes beyond the bounds (never `spare`), a
    /// warning for each. Call with the lock held.
    fn prune(&self, spare: &str) {
        let all = self.list();
        let mut count = all.len();
        let mut bytes: u64 = all.iter().map(|(_, b)| b).sum();
        for (id, len) in all {
            if count <= MAX_UNPUSHED && bytes <= MAX_UNPUSHED_BYTES {
                break;
            }
            if id == spare {
                continue;
            }
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.meta")));
            count -= 1;
            bytes = bytes.saturating_sub(len);
            tracing::warn!(id, dir = %self.dir.display(), "unpushed envelope deleted to stay within {MAX_UNPUSHED} envelopes / {MAX_UNPUSHED_BYTES} bytes: it will not be retried (its client has its file; `cilock push` stores it)");
        }
    }
}

/// A duration for messages: `300s`, `1.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn closed_store() -> StoreUrl {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        StoreUrl {
            insecure_http: true,
            registry: addr,
            repository: "evidence".into(),
        }
    }

    fn settings(urls: Vec<StoreUrl>) -> StoreSettings {
        StoreSettings {
            urls,
            timeout: Duration::from_secs(5),
            docker_config: None,
            retry_every: Duration::from_secs(1),
        }
    }

    #[test]
    fn without_stores_nothing_is_pushed_or_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = Pusher::new(d.path(), settings(Vec::new()));
        assert!(!p.enabled());
        assert!(p.push(0, "s", b"{}").is_empty());
        p.retry();
        assert!(!p.dir().exists());
    }

    #[test]
    fn a_failed_push_is_kept_owner_only_and_retried() {
        let d = tempfile::tempdir().unwrap();
        let url = closed_store();
        let p = Pusher::new(d.path(), settings(vec![url.clone()]));
        let env = br#"{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"k","sig":"AAE="}]}"#;
        let out = p.push(1000, "build", env);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].url, url.to_string());
        assert!(!out[0].ok);
        assert!(
            out[0].detail.contains("the daemon keeps the envelope ("),
            "{}",
            out[0].detail
        );
        let list = p.list();
        assert_eq!(list.len(), 1);
        let (id, len) = &list[0];
        assert_eq!(*len, env.len() as u64);
        assert!(id.ends_with(".1000.build"), "{id}");
        let f = p.dir().join(format!("{id}.json"));
        assert_eq!(std::fs::read(&f).unwrap(), env);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(p.dir()), 0o700);
        let meta = p.read_meta(id).unwrap();
        assert_eq!(meta.stores, vec![url.to_string()]);
        assert_eq!((meta.step.as_str(), meta.owner_uid), ("build", 1000));
        // Still down: still kept.
        p.retry();
        assert_eq!(p.list().len(), 1);
        // A store no longer configured is not pushed to (the copy stays).
        let other = Pusher::new(d.path(), settings(vec![closed_store()]));
        other.retry();
        assert_eq!(other.list().len(), 1);
    }

    /// Stores that take the connection and never answer: the pushes run
    /// at once, so the caller waits one `store_timeout`, not one per store.
    #[test]
    fn silent_stores_hold_the_caller_one_timeout() {
        let d = tempfile::tempdir().unwrap();
        // Four stores that never answer, 2 s each: one after another would
        // take 8 s; at once, one timeout (the bound below leaves room for a
        // loaded machine and still fails a sequential push).
        let silent: Vec<_> = (0..4)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let urls = silent
            .iter()
            .map(|l| StoreUrl {
                insecure_http: true,
                registry: l.local_addr().unwrap().to_string(),
                repository: "evidence".into(),
            })
            .collect();
        let mut s = settings(urls);
        s.timeout = Duration::from_secs(2);
        let p = Pusher::new(d.path(), s);
        let t = std::time::Instant::now();
        // A signed in-toto statement (one subject): the pushes reach the
        // registries.
        let env = br#"{"payload":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCJzdWJqZWN0IjpbeyJuYW1lIjoiYSIsImRpZ2VzdCI6eyJzaGEyNTYiOiJhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhIn19XSwicHJlZGljYXRlVHlwZSI6Imh0dHBzOi8vZXhhbXBsZS5jb20vcCIsInByZWRpY2F0ZSI6e319","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"k","sig":"AAE="}]}"#;
        let out = p.push(0, "s", env);
        let took = t.elapsed();
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|o| !o.ok), "{out:?}");
        assert!(
            took >= Duration::from_millis(1900),
            "took {took:?}: {out:?}"
        );
        assert!(took < Duration::from_secs(6), "took {took:?}");
        assert_eq!(p.list().len(), 1);
    }

    #[test]
    fn the_oldest_beyond_the_bound_are_deleted() {
        let d = tempfile::tempdir().unwrap();
        let p = Pusher::new(d.path(), settings(vec![closed_store()]));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(p.dir())
            .unwrap();
        for i in 0..MAX_UNPUSHED {
            let id = format!("{i:020}.0.0.old");
            std::fs::write(p.dir().join(format!("{id}.json")), b"{}").unwrap();
            std::fs::write(p.dir().join(format!("{id}.meta")), b"{}").unwrap();
        }
        let out = p.push(0, "new", b"{}");
        assert!(!out[0].ok);
        let list = p.list();
        assert_eq!(list.len(), MAX_UNPUSHED);
        assert!(!list
            .iter()
            .any(|(id, _)| id == &format!("{:020}.0.0.old", 0)));
        assert!(list.iter().any(|(id, _)| id.ends_with(".0.new")));
        assert!(!p.dir().join(format!("{:020}.0.0.old.meta", 0)).exists());
    }
}
