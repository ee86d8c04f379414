//! The daemon's service: who may begin and end which step (peer uid against
//! the target's owner and the workdir's), the reaper, signing, and the store
//! of signed envelopes not yet in their client's hands ([`crate::kept`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilock_evidence::keys::Signer;

use crate::attest_helper;
use crate::cgroup::PidFd;
use crate::engine::valid_step_name;
use crate::engine::{
    sign_slsa_export, sign_statement, uid_of, EndSpec, Engine, EngineConfig, EngineError, Reap,
    StepOutcome, StepSpec, HEARTBEAT_EVERY,
};
use crate::kept::{KeptStore, ToKeep};
use crate::unpushed::{Pusher, StoreSettings};
use cilock_api::{
    self, AckKept, ApiError, BeginStep, EndStep, EnvelopeHeader, ErrorKind, FetchKept, KeptInfo,
    ListKept, Outgoing, Payload, Peer, Reply, RequestCtx, StatusReply, StoreOutcome,
};

/// The daemon's service: the engine, the signing key and the store of
/// envelopes not yet in their client's hands ([`crate::kept`]).
pub struct DaemonService {
    engine: Arc<Engine>,
    signer: Signer,
    store: KeptStore,
    pusher: Arc<Pusher>,
}

/// Largest signed envelope returned inline in a [`Reply::Ended`] (older
/// clients; room left for the rest of the reply). Larger ones stay kept and
/// the reply says how to fetch them; `stream` clients get any size.
const MAX_REPLY_ENVELOPE: usize = cilock_api::MAX_MESSAGE - 64 * 1024;

/// How often the reaper applies the kept store's retention time.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// `cilock step fetch` arguments naming a kept envelope, for messages.
fn fetch_hint(k: &KeptInfo, peer: Peer) -> String {
    let owner = if peer.uid == 0 && k.owner_uid != 0 {
        format!(" --owner {}", k.owner_uid)
    } else {
        String::new()
    };
    format!("cilock step fetch --id {}{owner} -o FILE", k.id)
}

/// A step ended by [`DaemonService::end_and_keep`]: signed, kept, pushed.
struct Ended {
    out: StepOutcome,
    /// The signed envelope.
    bytes: Vec<u8>,
    kept: Option<KeptInfo>,
    /// The pushes of the envelope to the daemon's stores.
    stored: Vec<StoreOutcome>,
    /// The SLSA provenance export when the step asked for it (`Err`: why
    /// there is none).
    slsa: Option<Result<Vec<u8>, String>>,
    /// The pushes of the SLSA export.
    slsa_stored: Vec<StoreOutcome>,
}

impl DaemonService {
    /// Starts the engine, holds the key, and starts the reaper (steps nobody
    /// ends are ended after the step or idle timeout; their signed
    /// attestations are kept in `<state_dir>/kept/<uid>/`).
    pub fn new(cfg: EngineConfig, signer: Signer) -> anyhow::Result<Arc<DaemonService>> {
        Self::with_stores(cfg, signer, StoreSettings::default())
    }

    /// [`DaemonService::new`], pushing every signed envelope to the OCI
    /// registries of `stores` ([`crate::unpushed`]); unpushed envelopes are
    /// retried at start and every `stores.retry_every`.
    pub fn with_stores(
        cfg: EngineConfig,
        signer: Signer,
        stores: StoreSettings,
    ) -> anyhow::Result<Arc<DaemonService>> {
        let pusher = Arc::new(Pusher::new(&cfg.state_dir, stores));
        let store = KeptStore::new(&cfg.state_dir);
        let legacy = cfg.state_dir.join("reaped");
        let old = std::fs::read_dir(&legacy)
            .into_iter()
            .flatten()
            .flatten()
            .count();
        if old > 0 {
            tracing::warn!(
                dir = %legacy.display(),
                "{old} attestations kept by an earlier cilock-daemon are in this directory (root can copy them; `cilock step fetch` serves only {})",
                store.root().display()
            );
        }
        let engine = Engine::start(cfg)?;
        let svc = Arc::new(DaemonService {
            engine,
            signer,
            store,
            pusher: pusher.clone(),
        });
        if pusher.enabled() {
            let weak = Arc::downgrade(&pusher);
            std::thread::Builder::new()
                .name("cilock-store-retry".into())
                .spawn(move || loop {
                    let Some(p) = weak.upgrade() else { return };
                    p.retry();
                    let every = p.retry_every();
                    drop(p);
                    std::thread::sleep(every);
                })?;
        }
        svc.end_interrupted();
        svc.store.prune();
        let weak = Arc::downgrade(&svc);
        std::thread::Builder::new()
            .name("cilock-reaper".into())
            .spawn(move || {
                let mut pruned = Instant::now();
                loop {
                    std::thread::sleep(HEARTBEAT_EVERY);
                    match weak.upgrade() {
                        Some(s) => {
                            s.engine.heartbeat();
                            s.reap(Reap::Expired);
                            if pruned.elapsed() >= PRUNE_EVERY {
                                s.store.prune();
                                pruned = Instant::now();
                            }
                        }
                        None => return,
                    }
                }
            })?;
        Ok(svc)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Attests the steps a previous daemon left unended (their trace was
    /// interrupted by its death) and keeps the envelopes; a step whose
    /// envelope cannot be kept keeps its record (tried again next start).
    fn end_interrupted(&self) {
        for s in self.engine.take_interrupted() {
            let name = s.name().to_string();
            let env = s
                .statement(self.engine.kernel())
                .and_then(|st| sign_statement(&st, &self.signer));
            let owner = s.owner_uid();
            match env.map(|env| {
                let bytes = env.to_json();
                let kept = self.keep_bytes(owner, &name, "daemon restart", &bytes);
                if kept.is_ok() {
                    self.pusher.push(owner, &name, &bytes);
                }
                kept
            }) {
                Ok(Ok(p)) => {
                    tracing::warn!(step = %name, file = %p.display(), "a step the previous daemon left unended was ended; its attestation says the trace was interrupted and is kept");
                    self.engine.interrupted_done(
                        &s,
                        format!(
                            "step {name:?} was ended when the daemon restarted: the daemon that began it died, so its trace was interrupted; the attestation that says so is kept in {}",
                            p.display()
                        ),
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(step = %name, "cannot keep the attestation of an interrupted step (its record stays): {e}")
                }
                Err(e) => {
                    tracing::error!(step = %name, "cannot attest an interrupted step (its record stays): {e}")
                }
            }
        }
    }

    /// The store of kept envelopes.
    pub fn store(&self) -> &KeptStore {
        &self.store
    }

    /// Ends steps nobody ended and keeps their signed attestations.
    pub fn reap(&self, which: Reap) {
        for (name, outcome) in self.engine.reap(which) {
            match outcome.and_then(|o| {
                sign_statement(&o.statement, &self.signer).map(|env| (o, env.to_json()))
            }) {
                Ok((o, bytes)) => {
                    let slsa = self.slsa_export(&name, &o);
                    match self.keep_outcome(&name, &o, &bytes) {
                        Ok((k, p)) => {
                            if let Some(Ok(b)) = &slsa {
                                self.keep_slsa(&name, o.owner_uid, &k, b);
                            }
                            tracing::warn!(step = %name, uid = o.owner_uid, id = %k.id, file = %p.display(), "attestation of an unended step kept")
                        }
                        Err(e) => {
                            tracing::error!(step = %name, "cannot keep the attestation of an unended step: {e}")
                        }
                    }
                    // Logged by the pusher (no client to tell).
                    self.pusher.push(o.owner_uid, &name, &bytes);
                    if let Some(Ok(b)) = &slsa {
                        self.pusher.push(o.owner_uid, &name, b);
                    }
                }
                Err(e) => tracing::error!(step = %name, "cannot attest an unended step: {e}"),
            }
        }
    }

    fn keep_outcome(
        &self,
        name: &str,
        o: &StepOutcome,
        bytes: &[u8],
    ) -> std::io::Result<(KeptInfo, PathBuf)> {
        let kept = self.store.put(
            &ToKeep {
                owner_uid: o.owner_uid,
                step: name,
                ended_by: &o.ended_by,
                lost_events: o.lost_events,
                failure: o.failure.as_deref(),
            },
            bytes,
        )?;
        // Kept: the step needs no record any more (until now a daemon that
        // died would have left it to the next one to end).
        if let Some(p) = &o.record {
            let _ = std::fs::remove_file(p);
        }
        Ok(kept)
    }

    /// Keeps a signed envelope of `owner_uid`'s step `name` that `ended_by`
    /// ended (`<state_dir>/kept/<uid>/`, 0600, never overwriting) until its
    /// owner fetches it; returns its path. (Recovered steps use this.)
    pub fn keep_bytes(
        &self,
        owner_uid: u32,
        name: &str,
        ended_by: &str,
        bytes: &[u8],
    ) -> std::io::Result<PathBuf> {
        self.store
            .put(
                &ToKeep {
                    owner_uid,
                    step: name,
                    ended_by,
                    lost_events: 0,
                    failure: None,
                },
                bytes,
            )
            .map(|(_, p)| p)
    }

    /// The uid whose kept envelopes `peer` means (`None`: root, anyone's).
    fn kept_scope(peer: Peer, owner: Option<u32>) -> Result<Option<u32>, ApiError> {
        match (peer.uid, owner) {
            (0, o) => Ok(o),
            (c, Some(o)) if o != c => Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("uid {c} may only fetch its own attestations, not those of uid {o}"),
            )),
            (c, _) => Ok(Some(c)),
        }
    }

    /// Kept envelopes of step `step` that `peer` may fetch, oldest first;
    /// for root without an owner, its own when it has some, else everyone's.
    fn kept_of_step(&self, peer: Peer, owner: Option<u32>, step: &str) -> Vec<KeptInfo> {
        let Ok(scope) = Self::kept_scope(peer, owner) else {
            return Vec::new();
        };
        let mut all: Vec<KeptInfo> = self
            .store
            .list(scope)
            .into_iter()
            .filter(|k| k.step == step)
            .collect();
        if scope.is_none() && all.iter().any(|k| k.owner_uid == 0) {
            all.retain(|k| k.owner_uid == 0);
        }
        all
    }

    /// Ends a step: the engine's end, with a "not active" error that says
    /// when an envelope of that step is kept.
    fn end_outcome(&self, peer: Peer, req: &EndStep) -> Result<StepOutcome, ApiError> {
        let r = self.engine.end_as(
            &req.step,
            peer.uid,
            req.owner_uid,
            EndSpec {
                kill: req.kill,
                exitcode: req.exitcode,
                stdout: req.stdout.clone().unwrap_or_default(),
                stderr: req.stderr.clone().unwrap_or_default(),
                // A client's word: recorded under `claimed`.
                observed: false,
                interrupted: req.interrupted.clone().map(|mut i| {
                    // A claim, but bounded: a signal's name is short.
                    if i.signal.len() > 16 || !i.signal.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        i.signal = format!("signal {}", i.number);
                    }
                    i
                }),
                output_truncated: req
                    .truncated
                    .iter()
                    .filter(|(k, _)| *k == "stdout" || *k == "stderr")
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                wait_descendants: req.run.then(|| {
                    req.wait_descendants_ms
                        .map(Duration::from_millis)
                        .unwrap_or(self.engine.config().run_wait_descendants)
                        .min(self.engine.config().step_timeout)
                }),
                // Pinned now: the pid cannot name another process later.
                caller: if req.kill && peer.pid > 1 {
                    PidFd::open(peer.pid).ok().map(Arc::new)
                } else {
                    None
                },
            },
        );
        match r {
            Err(EngineError::NotFound(_)) => {
                let kept = self.kept_of_step(peer, req.owner_uid, &req.step);
                Err(match kept.last() {
                    None => EngineError::NotFound(req.step.clone()).into(),
                    Some(k) => {
                        let how = if matches!(k.ended_by.as_str(), "step end" | "run") {
                            format!(
                                "it was ended by `{}` at {} and its attestation was never acknowledged as written",
                                k.ended_by,
                                cilock_api::timefmt::fmt_utc(k.kept_at)
                            )
                        } else {
                            format!(
                                "the daemon ended it itself ({}) at {}",
                                if k.ended_by.is_empty() {
                                    "reason not recorded"
                                } else {
                                    &k.ended_by
                                },
                                cilock_api::timefmt::fmt_utc(k.kept_at)
                            )
                        };
                        ApiError::new(
                            ErrorKind::NotFound,
                            format!(
                                "no active step named {:?}: {how}; its signed attestation is kept by the daemon: {}{}",
                                req.step,
                                fetch_hint(k, peer),
                                if kept.len() > 1 {
                                    format!(" ({} kept for this step: cilock step fetch --list --step {})", kept.len(), req.step)
                                } else {
                                    String::new()
                                }
                            ),
                        )
                    }
                })
            }
            r => r.map_err(ApiError::from),
        }
    }

    /// Ends, signs and keeps: the envelope (and its SLSA export) is on disk
    /// before any reply (`kept: None` when keeping failed, logged; the
    /// reply is then the only copy). Then pushes both to the configured
    /// stores, whether or not the client gets the reply.
    fn end_and_keep(&self, peer: Peer, req: &EndStep) -> Result<Ended, ApiError> {
        let out = self.end_outcome(peer, req)?;
        let bytes = sign_statement(&out.statement, &self.signer)?.to_json();
        let slsa = self.slsa_export(&req.step, &out);
        let kept = match self.keep_outcome(&req.step, &out, &bytes) {
            Ok((k, _)) => Some(k),
            Err(e) => {
                tracing::error!(step = %req.step, uid = out.owner_uid, "cannot keep the signed attestation until its client has it (the reply is its only copy): {e}");
                None
            }
        };
        if let (Some(k), Some(Ok(b))) = (&kept, &slsa) {
            self.keep_slsa(&req.step, out.owner_uid, k, b);
        }
        let stored = self.pusher.push(out.owner_uid, &req.step, &bytes);
        let slsa_stored = match &slsa {
            Some(Ok(b)) => self.pusher.push(out.owner_uid, &req.step, b),
            _ => Vec::new(),
        };
        Ok(Ended {
            out,
            bytes,
            kept,
            stored,
            slsa,
            slsa_stored,
        })
    }

    /// Keeps the SLSA export beside the kept envelope `k` (logged when it
    /// cannot be: the reply is then its only copy).
    fn keep_slsa(&self, step: &str, owner: u32, k: &KeptInfo, bytes: &[u8]) {
        if let Err(e) = self.store.put_slsa(owner, &k.id, bytes) {
            tracing::error!(step = %step, uid = owner, id = %k.id, "cannot keep the SLSA provenance export beside its attestation: {e}");
        }
    }

    /// The SLSA provenance export of `out` when its step asked for one:
    /// signed by the daemon's key (`Err`: why it cannot be made, logged).
    fn slsa_export(&self, step: &str, out: &StepOutcome) -> Option<Result<Vec<u8>, String>> {
        let r = sign_slsa_export(out, &self.signer)?.map(|e| e.to_json());
        if let Err(e) = &r {
            tracing::warn!(step = %step, uid = out.owner_uid, "no SLSA provenance export: {e}");
        }
        Some(r)
    }

    fn header(
        out: &StepOutcome,
        step: &str,
        len: usize,
        kept: Option<&KeptInfo>,
        stored: Vec<StoreOutcome>,
    ) -> EnvelopeHeader {
        EnvelopeHeader {
            step: step.to_string(),
            owner_uid: out.owner_uid,
            id: kept.map(|k| k.id.clone()),
            bytes: len as u64,
            ended_by: out.ended_by.clone(),
            kept_at: kept.map_or(0, |k| k.kept_at),
            lost_events: out.lost_events,
            failure: out.failure.clone(),
            stored,
            slsa_bytes: 0,
            slsa_error: None,
            slsa_stored: Vec::new(),
        }
    }
}

impl Drop for DaemonService {
    fn drop(&mut self) {
        self.reap(Reap::All);
        self.engine.remove_parent();
    }
}

impl cilock_api::StepService for DaemonService {
    fn status(&self, peer: Peer) -> StatusReply {
        let active = self.engine.active_steps(peer.uid);
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            backend: self.engine.backend_name().to_string(),
            hooks: self.engine.capture().hooks_map(),
            steps: active.iter().map(|a| a.step.clone()).collect(),
            active,
            keyid: self.signer.key_id().to_string(),
        }
    }

    fn begin(&self, peer: Peer, req: BeginStep, cx: &RequestCtx) -> Result<Reply, ApiError> {
        // Pin the target before checking whose it is: its pid cannot then
        // name another process unnoticed (the engine checks again).
        let pin = PidFd::open(req.pid).map_err(|e| {
            ApiError::new(
                ErrorKind::BadRequest,
                format!("no process {}: {e}", req.pid),
            )
        })?;
        // The target must be the peer's own process (or the peer is root).
        let owner = uid_of(req.pid).ok_or_else(|| {
            ApiError::new(ErrorKind::BadRequest, format!("no process {}", req.pid))
        })?;
        if peer.uid != 0 && owner != peer.uid {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "pid {} belongs to uid {owner}, not to uid {}",
                    req.pid, peer.uid
                ),
            ));
        }
        let workdir = match &req.workdir {
            Some(w) => PathBuf::from(w),
            None => std::fs::read_link(format!("/proc/{}/cwd", req.pid)).map_err(|e| {
                ApiError::new(ErrorKind::BadRequest, format!("cwd of {}: {e}", req.pid))
            })?,
        };
        let workdir_fd = open_workdir(&workdir, peer.uid)?;
        let (env, truncated) = attest_helper::environ_bounded(req.pid);
        let mut notes = Vec::new();
        if truncated {
            notes.push(format!(
                "the environment of pid {} is larger than {} bytes: only the variables in the first {} bytes were recorded",
                req.pid,
                attest_helper::MAX_ENVIRON,
                attest_helper::MAX_ENVIRON
            ));
        }
        let spec = StepSpec {
            name: req.step,
            pid: req.pid,
            owner_uid: peer.uid,
            attestations: req.attestations,
            options: req.options.unwrap_or_default(),
            workdir,
            cmd: req.cmd,
            env,
            owner_gid: peer.gid,
            workdir_fd: Some(Arc::new(workdir_fd)),
            notes,
        };
        let cg = self
            .engine
            .begin_with(spec, Some(pin), &|| cx.client_gone())?;
        Ok(Reply::Begun {
            cgroup: cg.display().to_string(),
        })
    }

    fn keep_undelivered(
        &self,
        peer: Peer,
        step: &str,
        reply: &Reply,
    ) -> Result<Option<PathBuf>, String> {
        match reply {
            // Kept before it was sent.
            Reply::Ended {
                kept: Some(id),
                envelope,
                ..
            } => {
                let owner = self
                    .store
                    .list(if peer.uid == 0 { None } else { Some(peer.uid) })
                    .into_iter()
                    .find(|k| &k.id == id)
                    .map_or(peer.uid, |k| k.owner_uid);
                let p = self.store.path(owner, id);
                if p.exists() {
                    return Ok(Some(p));
                }
                let bytes = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
                self.keep_bytes(owner, step, "step end", &bytes)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            Reply::Ended { envelope, .. } => {
                if !valid_step_name(step) {
                    return Err(format!("invalid step name {step:?}"));
                }
                let bytes = serde_json::to_vec(envelope).map_err(|e| e.to_string())?;
                self.keep_bytes(peer.uid, step, "step end", &bytes)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(None),
        }
    }

    fn end(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Reply, ApiError> {
        let Ended {
            out,
            bytes,
            kept,
            stored,
            slsa,
            ..
        } = self.end_and_keep(peer, &req)?;
        let slsa_len = match &slsa {
            Some(Ok(b)) => b.len(),
            _ => 0,
        };
        // Evidence is never dropped: it stays kept when it cannot be returned.
        let why = if cx.client_gone() {
            Some("the client hung up".to_string())
        } else if bytes.len() + slsa_len > MAX_REPLY_ENVELOPE {
            Some(format!(
                "the signed attestation ({} bytes{}) exceeds the reply limit ({MAX_REPLY_ENVELOPE} bytes) of this client (a newer cilock receives any size)",
                bytes.len(),
                if slsa_len > 0 {
                    format!(", with its SLSA export {slsa_len} more")
                } else {
                    String::new()
                }
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(match &kept {
                Some(k) => {
                    tracing::warn!(step = %req.step, uid = out.owner_uid, id = %k.id, "{why}: attestation kept");
                    ApiError::new(
                        ErrorKind::Internal,
                        format!(
                            "{why}; the step has ended and its attestation is kept: {}",
                            fetch_hint(k, peer)
                        ),
                    )
                }
                None => {
                    tracing::error!(step = %req.step, "{why}, and keeping the attestation failed");
                    ApiError::new(
                        ErrorKind::Internal,
                        format!("{why}, and keeping the attestation failed (see the daemon's log)"),
                    )
                }
            });
        }
        let envelope = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        let (slsa_envelope, slsa_error) = match slsa {
            // Push outcomes not reported: this reply has no field for them.
            Some(Ok(b)) => (serde_json::from_slice(&b).ok(), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Ok(Reply::Ended {
            envelope,
            lost_events: out.lost_events,
            failure: out.failure,
            kept: kept.map(|k| k.id),
            stored,
            slsa_envelope,
            slsa_error,
        })
    }

    fn end_stream(&self, peer: Peer, req: EndStep, cx: &RequestCtx) -> Result<Outgoing, ApiError> {
        let Ended {
            out,
            bytes,
            kept,
            stored,
            slsa,
            slsa_stored,
        } = self.end_and_keep(peer, &req)?;
        if cx.client_gone() {
            if let Some(k) = &kept {
                tracing::warn!(step = %req.step, uid = out.owner_uid, id = %k.id, "the client hung up: attestation kept");
            }
        }
        let mut header = Self::header(&out, &req.step, bytes.len(), kept.as_ref(), stored);
        let slsa = match slsa {
            Some(Ok(b)) => {
                header.slsa_bytes = b.len() as u64;
                header.slsa_stored = slsa_stored;
                Some(b)
            }
            Some(Err(e)) => {
                header.slsa_error = Some(e);
                None
            }
            None => None,
        };
        // Sent from the kept file: what the client gets is what is kept.
        let payload = kept
            .as_ref()
            .and_then(|k| self.store.open(out.owner_uid, &k.id).ok())
            .map_or(Payload::Bytes(bytes), Payload::File);
        Ok(Outgoing {
            reply: Reply::Envelope(header),
            payload: Some(payload),
            slsa,
        })
    }

    fn list_kept(&self, peer: Peer, req: ListKept) -> Result<Reply, ApiError> {
        let scope = Self::kept_scope(peer, req.owner_uid)?;
        let entries = self
            .store
            .list(scope)
            .into_iter()
            .filter(|k| req.step.as_ref().is_none_or(|s| &k.step == s))
            .collect();
        Ok(Reply::Kept { entries })
    }

    fn fetch_kept(&self, peer: Peer, req: FetchKept) -> Result<Outgoing, ApiError> {
        let scope = Self::kept_scope(peer, req.owner_uid)?;
        let k = match (&req.id, &req.step) {
            (Some(id), _) => {
                let found: Vec<KeptInfo> = match scope {
                    Some(u) => self.store.find(u, id).into_iter().collect(),
                    None => self
                        .store
                        .list(None)
                        .into_iter()
                        .filter(|k| &k.id == id)
                        .collect(),
                };
                match &found[..] {
                    [k] => k.clone(),
                    [] => {
                        return Err(ApiError::new(
                            ErrorKind::NotFound,
                            format!("no kept attestation with id {id:?} (cilock step fetch --list)"),
                        ))
                    }
                    _ => {
                        return Err(ApiError::new(
                            ErrorKind::BadRequest,
                            format!("several users have a kept attestation with id {id:?}: name the owner (--owner UID)"),
                        ))
                    }
                }
            }
            (None, Some(step)) => {
                let all = self.kept_of_step(peer, req.owner_uid, step);
                let mut owners: Vec<u32> = all.iter().map(|k| k.owner_uid).collect();
                owners.sort_unstable();
                owners.dedup();
                if owners.len() > 1 {
                    return Err(ApiError::new(
                        ErrorKind::BadRequest,
                        format!(
                            "several users have kept attestations of step {step:?} (uids {}): name the owner (--owner UID)",
                            owners.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                match all.into_iter().next_back() {
                    Some(k) => k,
                    None => {
                        let active = self
                            .engine
                            .active_steps(peer.uid)
                            .iter()
                            .any(|a| &a.step == step);
                        return Err(ApiError::new(
                            ErrorKind::NotFound,
                            if active {
                                format!("step {step:?} is still active: end it with `cilock step end --step {step} -o FILE`")
                            } else {
                                format!("no kept attestation of step {step:?}")
                            },
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(ApiError::new(ErrorKind::BadRequest, "name a step or an id"))
            }
        };
        let file = self.store.open(k.owner_uid, &k.id).map_err(|e| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("kept attestation {}: {e}", k.id),
            )
        })?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(k.bytes);
        let slsa = self
            .store
            .slsa(k.owner_uid, &k.id, cilock_api::client::MAX_ENVELOPE)
            .unwrap_or_else(|e| {
                tracing::warn!(uid = k.owner_uid, id = %k.id, "{e}");
                None
            });
        info_fetch(peer, &k);
        Ok(Outgoing {
            reply: Reply::Envelope(EnvelopeHeader {
                step: k.step.clone(),
                owner_uid: k.owner_uid,
                id: Some(k.id.clone()),
                bytes,
                ended_by: k.ended_by.clone(),
                kept_at: k.kept_at,
                lost_events: k.lost_events,
                failure: k.failure.clone(),
                stored: Vec::new(),
                slsa_bytes: slsa.as_ref().map_or(0, |b| b.len() as u64),
                slsa_error: None,
                slsa_stored: Vec::new(),
            }),
            payload: Some(Payload::File(file)),
            slsa,
        })
    }

    fn ack_kept(&self, peer: Peer, req: AckKept) -> Result<Reply, ApiError> {
        let owner = match Self::kept_scope(peer, req.owner_uid)? {
            Some(u) => u,
            None => peer.uid,
        };
        match self.store.remove(owner, &req.id) {
            Ok(true) => {
                tracing::info!(uid = owner, id = %req.id, "the client has the attestation: kept copy deleted");
                Ok(Reply::Acked { id: req.id })
            }
            Ok(false) => Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no kept attestation with id {:?}", req.id),
            )),
            Err(e) => Err(ApiError::new(
                ErrorKind::Internal,
                format!("cannot delete the kept attestation {}: {e}", req.id),
            )),
        }
    }
}

fn info_fetch(peer: Peer, k: &KeptInfo) {
    tracing::info!(uid = peer.uid, owner = k.owner_uid, step = %k.step, id = %k.id, "sending a kept attestation");
}

/// Opens the working directory once, as the daemon (`O_PATH|O_DIRECTORY`):
/// it must be absolute, a directory, and (unless the peer is root) belong
/// to the peer. The attestors read the workdir only through this
/// descriptor (the helper gets it as fd 3), so swapping the path later
/// changes nothing.
fn open_workdir(dir: &Path, uid: u32) -> Result<OwnedFd, ApiError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    if !dir.is_absolute() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {} is not absolute", dir.display()),
        ));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| {
            let what = if e.raw_os_error() == Some(libc::ENOTDIR) {
                "is not a directory".to_string()
            } else {
                e.to_string()
            };
            ApiError::new(
                ErrorKind::BadRequest,
                format!("workdir {}: {what}", dir.display()),
            )
        })?;
    let md = f.metadata().map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {}: {e}", dir.display()),
        )
    })?;
    if !md.is_dir() {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("workdir {} is not a directory", dir.display()),
        ));
    }
    if uid != 0 && md.uid() != uid {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("workdir {} is not owned by uid {uid}", dir.display()),
        ));
    }
    Ok(OwnedFd::from(f))
}
