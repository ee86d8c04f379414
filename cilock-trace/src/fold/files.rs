//! Files: the per-process open and write records, the closes that stamp
//! written files, the digests given (or the reasons none is) once hashed, and
//! `/proc` paths.

use super::*;

impl Recorder {
    /// What the step's processes opened for writing: the identity of each
    /// file at its last write open, or the path when that is unknown.
    pub fn written(&self) -> StepWrites {
        let mut w = StepWrites::default();
        for p in &self.procs {
            for (path, rec) in p.opens.iter().filter(|(_, r)| r.wrote && r.opened) {
                w.written_paths.insert(path.to_string());
                match rec.write {
                    Some(id) if id.1 != 0 => {
                        w.files.insert(id);
                    }
                    _ if rec.unresolved.is_none() => {
                        w.paths.insert(path.to_string());
                    }
                    _ => {}
                }
            }
        }
        w
    }

    /// The record of `path` in process `i`, creating it within the bounds.
    pub(super) fn open_rec(&mut self, i: usize, path: &str) -> Option<&mut OpenRec> {
        if !self.procs[i].opens.contains_key(path) {
            let key = match self.paths.get(path) {
                Some(k) => k.clone(),
                None if self.paths.len() >= self.limits.max_files => {
                    self.count("files");
                    return None;
                }
                None => {
                    let k: Arc<str> = Arc::from(path);
                    self.paths.insert(k.clone());
                    k
                }
            };
            if self.records >= self.limits.max_files.saturating_mul(2) {
                self.count("files");
                return None;
            }
            self.records += 1;
            self.procs[i].opens.insert(key, OpenRec::default());
        }
        self.procs[i].opens.get_mut(path)
    }

    /// Remembers that process `i` opened (dev, ino) for writing at `path`.
    pub(super) fn index_write(&mut self, i: usize, dev: u64, ino: u64, path: &str) {
        let Some(key) = self.paths.get(path).cloned() else {
            return;
        };
        let v = self.written.entry((i, dev, ino)).or_default();
        if !v.contains(&key) {
            v.push(key);
        }
    }

    /// Process `pid` let go of a file it had open for writing: the stamp
    /// of every path where that file is its last write open.
    pub(super) fn closed(&mut self, pid: u32, stamp: FileStamp) {
        let Some(&i) = self.live.get(&pid) else {
            return;
        };
        let Some(paths) = self.written.get(&(i, stamp.dev, stamp.ino)) else {
            return;
        };
        for path in paths {
            if let Some(rec) = self.procs[i].opens.get_mut(path) {
                if rec.write == Some((stamp.dev, stamp.ino)) {
                    rec.closed = Some(stamp);
                }
            }
        }
    }
}

/// The digest of `path` if the file hashed there has identity `id`.
pub(super) fn by_identity(
    path: &str,
    id: Identity,
    results: &HashMap<&str, &Hashed>,
) -> Result<DigestSet, String> {
    let rec = OpenRec {
        read: match id {
            Identity::Read(s) => Some(s),
            Identity::Write { .. } | Identity::Closed(_) => None,
        },
        opened: true,
        ..Default::default()
    };
    let (d, why) = digest_for(path, &rec, results);
    why.map_or(Ok(d), Err)
}

pub(super) fn digest_for(
    path: &str,
    rec: &OpenRec,
    results: &HashMap<&str, &Hashed>,
) -> (DigestSet, Option<String>) {
    let no = |why: String| (DigestSet::default(), Some(why));
    if let Some(why) = &rec.unresolved {
        return no(why.to_string());
    }
    if rec.opath && !rec.opened {
        return no(REASON_O_PATH.into());
    }
    let Some(id) = rec.identity() else {
        if rec.wrote && rec.write.is_some() {
            return no(REASON_WRITE_NOT_CLOSED.into());
        }
        return no(REASON_NO_STAMP.into());
    };
    // "Modified" only for the same inode whose change time moved on: an
    // inode number reused by another file (its ctime older than at the
    // open), another mount's or namespace's file, another spelling of a
    // name — all are another file, never a modification.
    let mismatch = |seen: &Seen| {
        if let Identity::Closed(_) = id {
            return if id.same_file(seen) {
                REASON_WRITE_MODIFIED
            } else {
                REASON_WRITE_OTHER
            }
            .to_string();
        }
        let moved_on = match id {
            Identity::Read(then) => seen.stamp.ctime_ns >= then.ctime_ns,
            _ => true,
        };
        if id.same_file(seen) && moved_on {
            REASON_MODIFIED.to_string()
        } else {
            REASON_REPLACED.to_string()
        }
    };
    match results.get(path) {
        Some(Hashed::Digest(d, seen)) => {
            if id.matches(seen) {
                (d.clone(), None)
            } else {
                tracing::debug!(path, ?id, ?seen, "file identity changed after open");
                no(mismatch(seen))
            }
        }
        Some(Hashed::Mismatch(seen)) => no(mismatch(seen)),
        Some(Hashed::NotRegular(kind)) => no((*kind).to_string()),
        Some(Hashed::Unreadable) => no(REASON_UNREADABLE.into()),
        Some(Hashed::TooLarge(n, m)) => {
            no(format!("not hashed: {n} bytes exceeds the limit of {m}"))
        }
        Some(Hashed::OutOfTime(b)) => no(format!(
            "not hashed: the step's hashing time budget ({b:?}) ran out"
        )),
        Some(Hashed::ChangedWhileHashing) => no("modified while it was being hashed".into()),
        Some(Hashed::Error(e)) => no(format!("not hashed: {e}")),
        None => no("not hashed".into()),
    }
}

/// `/proc/<own pid>/…` → `/proc/self/…`, the spelling policies match on.
pub(super) fn normalize_proc_self(path: &str, pid: u32) -> String {
    if let Some(rest) = path.strip_prefix("/proc/") {
        let (num, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if num == pid.to_string() {
            return if tail.is_empty() {
                "/proc/self".to_string()
            } else {
                format!("/proc/self/{tail}")
            };
        }
    }
    path.to_string()
}

/// Opens of process environments and memory: a credential-harvesting
/// indicator worth a syscall event.
pub(super) fn proc_secret_read(path: &str, _pid: u32) -> Option<String> {
    let rest = path.strip_prefix("/proc/")?;
    let (who, tail) = rest.split_once('/')?;
    let what = match tail {
        "environ" => "environment",
        "mem" => "memory",
        _ => return None,
    };
    if who == "self" {
        Some(format!("read of its own {what} ({path})"))
    } else if who.chars().all(|c| c.is_ascii_digit()) {
        Some(format!("read of another process's {what} ({path})"))
    } else {
        None
    }
}
