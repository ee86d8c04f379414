//! The daemon's store of signed envelopes its clients do not have yet.
//!
//! Every envelope the daemon signs is written here *before* the reply is
//! sent: `<state_dir>/kept/<owner uid>/<id>.json` (the envelope, byte for
//! byte as sent) and `<id>.meta` (step, who ended it, when, lost events,
//! failure). Directories are 0700 and files 0600, owned by the daemon
//! (root); users reach their own envelopes only through the socket
//! (`cilock step fetch`). The client deletes a copy by acknowledging it
//! once its output file is committed; steps the daemon ended itself (idle,
//! timeout, daemon stop), ends whose client left, replies that could not be
//! delivered and outputs that could not be written stay until fetched and
//! acknowledged.
//!
//! Bounds (per owner uid): at most [`MAX_KEPT_PER_USER`] envelopes and
//! [`MAX_KEPT_BYTES_PER_USER`] bytes, kept at most [`KEPT_RETENTION`]. A new
//! envelope is always kept; to make room the oldest ones of that uid are
//! deleted, each with a warning in the daemon's log naming the step, id and
//! reason. Nothing is deleted without such a line.
//!
//! A step that asked for the SLSA provenance export
//! (`--attestor-slsa-export`) has it kept beside its envelope as
//! `<id>.slsa` (the export's DSSE envelope), sent after the envelope by a
//! fetch and deleted with it.

use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use cilock_api::KeptInfo;

/// How long an envelope nobody fetched is kept.
pub const KEPT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Kept envelopes per owner uid, at most.
pub const MAX_KEPT_PER_USER: usize = 100;
/// Bytes of kept envelopes per owner uid, at most (a single envelope
/// larger than this is still kept, alone).
pub const MAX_KEPT_BYTES_PER_USER: u64 = 2 << 30;
/// Largest `.meta` file read.
pub(crate) const MAX_META: u64 = 64 * 1024;

/// What is recorded beside an envelope.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    step: String,
    owner_uid: u32,
    #[serde(default)]
    ended_by: String,
    #[serde(default)]
    kept_at: u64,
    #[serde(default)]
    lost_events: u64,
    #[serde(default)]
    failure: Option<String>,
}

/// An envelope to keep.
#[derive(Clone, Debug)]
pub struct ToKeep<'a> {
    /// Owner uid.
    pub owner_uid: u32,
    /// Step name (validated by the engine).
    pub step: &'a str,
    /// Who ended the step.
    pub ended_by: &'a str,
    /// Events lost during the step.
    pub lost_events: u64,
    /// Attestor failure, if any.
    pub failure: Option<&'a str>,
}

/// The store (see the [module docs](self)).
#[derive(Debug)]
pub struct KeptStore {
    root: PathBuf,
    seq: AtomicU64,
    /// Serialises puts, removals and pruning (the caps are per uid).
    lock: Mutex<()>,
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Ids are file stems the daemon made: `<step>.<nanoseconds>.<n>`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'))
}

impl KeptStore {
    /// The store under `<state_dir>/kept` (created when first used).
    pub fn new(state_dir: &Path) -> KeptStore {
        KeptStore {
            root: state_dir.join("kept"),
            seq: AtomicU64::new(0),
            lock: Mutex::new(()),
        }
    }

    /// `<state_dir>/kept`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates (0700) or checks a directory of the store: a real directory
    /// owned by this process's euid, mode forced to 0700.
    pub(crate) fn ensure_dir(dir: &Path) -> io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let md = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if !md.is_dir() || md.uid() != euid {
            return Err(io::Error::other(format!(
                "{} is not a directory owned by uid {euid}",
                dir.display()
            )));
        }
        if md.mode() & 0o7777 != 0o700 {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    fn user_dir(&self, uid: u32) -> PathBuf {
        self.root.join(uid.to_string())
    }

    /// Keeps the SLSA provenance export of the kept envelope `id` of `uid`
    /// beside it (`<id>.slsa`).
    pub fn put_slsa(&self, uid: u32, id: &str, bytes: &[u8]) -> io::Result<()> {
        if !valid_id(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid id"));
        }
        let _g = self.guard();
        write_new(&self.user_dir(uid), &format!("{id}.slsa"), bytes)
    }

    /// The SLSA provenance export kept beside `id` of `uid`, if any (at
    /// most `max` bytes; a larger one is an error).
    pub fn slsa(&self, uid: u32, id: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match read_bounded(&self.user_dir(uid).join(format!("{id}.slsa")), max + 1) {
            Ok(b) if b.len() as u64 > max => Err(io::Error::other(format!(
                "the kept SLSA export of {id} is larger than {max} bytes"
            ))),
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the envelope `id` of `uid` is (whether or not it exists).
    pub fn path(&self, uid: u32, id: &str) -> PathBuf {
        self.user_dir(uid).join(format!("{id}.json"))
    }

    /// Keeps `bytes` (a signed envelope): written and synced before this
    /// returns. Then applies the bounds to the owner's other envelopes.
    pub fn put(&self, what: &ToKeep<'_>, bytes: &[u8]) -> io::Result<(KeptInfo, PathBuf)> {
        let _g = self.guard();
        if !crate::engine::valid_step_name(what.step) {
            return Err(io::Error::other(format!(
                "invalid step name {:?}",
                what.step
            )));
        }
        if let Some(parent) = self.root.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        Self::ensure_dir(&self.root)?;
        let dir = self.user_dir(what.owner_uid);
        Self::ensure_dir(&dir)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}.{nanos}.{n}", what.step);
        let meta = Meta {
            step: what.step.to_string(),
            owner_uid: what.owner_uid,
            ended_by: what.ended_by.to_string(),
            kept_at: now_secs(),
            lost_events: what.lost_events,
            failure: what.failure.map(str::to_string),
        };
        let meta_bytes = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        write_new(&dir, &format!("{id}.meta"), &meta_bytes)?;
        let path = dir.join(format!("{id}.json"));
        if let Err(e) = write_new(&dir, &format!("{id}.json"), bytes) {
            let _ = std::fs::remove_file(dir.join(format!("{id}.meta")));
            return Err(e);
        }
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let info = KeptInfo {
            id: id.clone(),
            step: meta.step,
            owner_uid: meta.owner_uid,
            ended_by: meta.ended_by,
            kept_at: meta.kept_at,
            bytes: bytes.len() as u64,
            lost_events: meta.lost_events,
            failure: meta.failure,
        };
        self.prune_uid(what.owner_uid, Some(&id));
        Ok((info, path))
    }

    /// The kept envelopes of `uid` (all uids when `None`), oldest first.
    pub fn list(&self, uid: Option<u32>) -> Vec<KeptInfo> {
        let uids: Vec<u32> = match uid {
            Some(u) => vec![u],
            None => std::fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect(),
        };
        let mut out: Vec<KeptInfo> = uids.into_iter().flat_map(|u| self.list_uid(u)).collect();
        out.sort_by(|a, b| (a.kept_at, &a.id).cmp(&(b.kept_at, &b.id)));
        out
    }

    fn list_uid(&self, uid: u32) -> Vec<KeptInfo> {
        let dir = self.user_dir(uid);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            out.push(self.info(uid, id, md.len(), md.mtime().max(0) as u64));
        }
        out
    }

    fn info(&self, uid: u32, id: &str, bytes: u64, mtime: u64) -> KeptInfo {
        let meta = read_bounded(&self.user_dir(uid).join(format!("{id}.meta")), MAX_META)
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
        let meta = meta.unwrap_or_else(|| Meta {
            // `<step>.<nanos>.<n>`: the step is what precedes the last two.
            step: id.rsplitn(3, '.').nth(2).unwrap_or(id).to_string(),
            owner_uid: uid,
            kept_at: mtime,
            ..Default::default()
        });
        KeptInfo {
            id: id.to_string(),
            step: meta.step,
            owner_uid: uid,
            ended_by: meta.ended_by,
            kept_at: meta.kept_at,
            bytes,
            lost_events: meta.lost_events,
            failure: meta.failure,
        }
    }

    /// The envelope `id` of `uid`, if kept.
    pub fn find(&self, uid: u32, id: &str) -> Option<KeptInfo> {
        if !valid_id(id) {
            return None;
        }
        let md = std::fs::symlink_metadata(self.path(uid, id)).ok()?;
        md.is_file()
            .then(|| self.info(uid, id, md.len(), md.mtime().max(0) as u64))
    }

    /// Opens a kept envelope for reading.
    pub fn open(&self, uid: u32, id: &str) -> io::Result<std::fs::File> {
        if !valid_id(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid id"));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.path(uid, id))
    }

    /// Deletes a kept envelope (its client has it). False when it was not
    /// kept.
    pub fn remove(&self, uid: u32, id: &str) -> io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        let _g = self.guard();
        self.remove_files(uid, id)
    }

    fn remove_files(&self, uid: u32, id: &str) -> io::Result<bool> {
        let dir = self.user_dir(uid);
        let r = match std::fs::remove_file(dir.join(format!("{id}.json"))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(dir.join(format!("{id}.meta")));
        let _ = std::fs::remove_file(dir.join(format!("{id}.slsa")));
        r
    }

    /// Applies the retention time and the per-uid caps to every uid.
    pub fn prune(&self) {
        let _g = self.guard();
        let uids: Vec<u32> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        for u in uids {
            self.prune_uid(u, None);
        }
    }

    /// Deletes `uid`'s envelopes past the retention time, then its oldest
    /// ones beyond the caps (never `spare`); a warning for each. Also
    /// removes leftovers of interrupted writes. Call with the lock held.
    fn prune_uid(&self, uid: u32, spare: Option<&str>) {
        let dir = self.user_dir(uid);
        let now = now_secs();
        // Leftovers: temporary files and `.meta` files without an envelope.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let stale = e
                .metadata()
                .map(|m| now.saturating_sub(m.mtime().max(0) as u64) > 3600)
                .unwrap_or(false);
            let orphan = n
                .strip_suffix(".meta")
                .or_else(|| n.strip_suffix(".slsa"))
                .is_some_and(|id| !dir.join(format!("{id}.json")).exists());
            if stale && (n.starts_with(".tmp.") || orphan) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut all = self.list_uid(uid);
        all.sort_by(|a, b| (a.kept_at, &a.id).cmp(&(b.kept_at, &b.id)));
        let mut left = Vec::new();
        for k in all {
            if Some(k.id.as_str()) != spare
                && now.saturating_sub(k.kept_at) > KEPT_RETENTION.as_secs()
            {
                self.drop_one(
                    &k,
                    "it was kept longer than the retention time (7 days) without being fetched",
                );
            } else {
                left.push(k);
            }
        }
        let mut count = left.len();
        let mut bytes: u64 = left.iter().map(|k| k.bytes).sum();
        for k in &left {
            if count <= MAX_KEPT_PER_USER && bytes <= MAX_KEPT_BYTES_PER_USER {
                break;
            }
            if Some(k.id.as_str()) == spare {
                continue;
            }
            self.drop_one(
                k,
                &format!(
                    "uid {uid} has more than {MAX_KEPT_PER_USER} kept attestations or {} bytes of them; the oldest go first",
                    MAX_KEPT_BYTES_PER_USER
                ),
            );
            count -= 1;
            bytes = bytes.saturating_sub(k.bytes);
        }
    }

    fn drop_one(&self, k: &KeptInfo, why: &str) {
        match self.remove_files(k.owner_uid, &k.id) {
            Ok(_) => tracing::warn!(
                uid = k.owner_uid,
                step = %k.step,
                id = %k.id,
                kept_at = %cilock_api::timefmt::fmt_utc(k.kept_at),
                "deleted a kept attestation nobody fetched: {why}"
            ),
            Err(e) => tracing::error!(
                uid = k.owner_uid,
                step = %k.step,
                id = %k.id,
                "cannot delete a kept attestation: {e}"
            ),
        }
    }
}

/// Reads at most `max` bytes of the file `p` (never through a symlink).
pub(crate) fn read_bounded(p: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)?;
    let mut b = Vec::new();
    f.take(max).read_to_end(&mut b)?;
    Ok(b)
}

/// Writes `bytes` to `dir/name` (0600, never overwriting), through a
/// temporary file renamed into place once synced.
pub(crate) fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_file(dir, name, bytes, false)
}

/// [`write_new`], replacing `dir/name` when `replace`.
pub(crate) fn write_file(dir: &Path, name: &str, bytes: &[u8], replace: bool) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp.{name}"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let r = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    let r = r.and_then(|()| {
        // No overwrite: the id is unique; a leftover is an error.
        let dest = dir.join(name);
        if !replace && dest.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", dest.display()),
            ));
        }
        std::fs::rename(&tmp, &dest)
    });
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_list_remove_and_caps() {
        let d = tempfile::tempdir().unwrap();
        let s = KeptStore::new(d.path());
        let what = ToKeep {
            owner_uid: 1000,
            step: "build",
            ended_by: "idle",
            lost_events: 3,
            failure: None,
        };
        let (a, p) = s.put(&what, b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        assert_eq!(mode(s.root()), 0o700);
        assert!(a.id.starts_with("build."), "{}", a.id);
        let l = s.list(None);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].ended_by, "idle");
        assert_eq!(l[0].bytes, 7);
        // What a fetch reports comes from the kept metadata.
        assert_eq!(l[0].lost_events, 3);
        assert_eq!(a.lost_events, 3);
        assert!(s.list(Some(1001)).is_empty());
        assert!(s.find(1001, &a.id).is_none());
        assert!(s.find(1000, "../x").is_none());
        for _ in 0..MAX_KEPT_PER_USER + 5 {
            s.put(&what, b"{}").unwrap();
        }
        assert_eq!(s.list(Some(1000)).len(), MAX_KEPT_PER_USER);
        // The oldest went first.
        assert!(s.find(1000, &a.id).is_none());
        let last = s.list(Some(1000)).pop().unwrap();
        // An SLSA export beside it: not listed, read back, deleted with it.
        assert_eq!(s.slsa(1000, &last.id, 100).unwrap(), None);
        s.put_slsa(1000, &last.id, b"{\"slsa\":1}").unwrap();
        assert_eq!(s.list(Some(1000)).len(), MAX_KEPT_PER_USER);
        assert_eq!(
            s.slsa(1000, &last.id, 100).unwrap().as_deref(),
            Some(&b"{\"slsa\":1}"[..])
        );
        assert!(s.slsa(1000, &last.id, 3).is_err());
        let slsa_file = s.path(1000, &last.id).with_extension("slsa");
        assert!(slsa_file.exists());
        assert!(s.remove(1000, &last.id).unwrap());
        assert!(!slsa_file.exists());
        assert!(!s.remove(1000, &last.id).unwrap());
    }
}
