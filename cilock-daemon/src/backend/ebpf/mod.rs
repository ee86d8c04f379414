//! The eBPF backend: the probes are loaded and attached once; steps are
//! registered by cgroup id in the kernel's `STEPS` map; one consumer thread
//! drains the ring buffer and routes each record to its step's sink.
//!
//! - [`probes`]: what each event family attaches (one module per family);
//! - `loader`: finding, loading and attaching a program by name;
//! - [`sysconfig`]: the programs' `.rodata` syscall configuration;
//! - [`offsets`] / [`btf`]: the kernel layout the programs read;
//! - [`kernel_log`]: the programs' log forwarded to `tracing`;
//! - [`probe`]: what this kernel lets load, per program kind (`cilock doctor`);
//! - records become events in `cilock_trace::decode` (the pure trace model).

mod alias;
pub mod btf;
pub mod cgroup_id;
pub mod kernel_log;
mod loader;
pub mod offsets;
pub mod probe;
pub mod probes;
pub mod sysconfig;

use cilock_trace::decode;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::{Ebpf, EbpfLoader};
use cilock_abi::{kind, move_flags, StepLoss};
use loader::map_err;

use crate::backend::{
    Backend, BackendError, BackendKind, CaptureInfo, Concern, Count, Counting, EventCounts,
    Limitation, Sink, StepTarget, Tap,
};
use crate::cgroup::Cgroup;
use cilock_trace::proto::stream::Streams;
use cilock_trace::syscall::Host;
use cilock_trace::TraceEvent;
use decode::{Clock, Record};

pub use alias::AliasGuard;

/// The compiled kernel programs (empty when built with CILOCK_SKIP_EBPF=1).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cilock"));

/// Why the eBPF backend is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// This build carries no kernel programs.
    #[error("this cilock was built without eBPF programs (CILOCK_SKIP_EBPF=1)")]
    NotBuilt,
    /// The kernel has no BTF.
    #[error("kernel BTF unavailable (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(std::io::Error),
    /// Offsets could not be computed.
    #[error("kernel layout: {0}")]
    Offsets(#[from] offsets::OffsetsError),
    /// tracefs is not mounted.
    #[error("tracefs not mounted (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
    /// Loading failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{what}: {source}")]
    Program {
        /// Which program/hook.
        what: String,
        /// The cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {what}: {source}")]
    Map {
        /// Which map/operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// The consumer thread could not start.
    #[error("starting the ring-buffer consumer: {0}")]
    Thread(std::io::Error),
    /// The step is not registered.
    #[error("step cgroup {0} is not registered")]
    UnknownStep(u64),
    /// A cgroup alias could not be added.
    #[error("{0}")]
    Alias(String),
}

/// Captured records per kind for one step, counted by the consumer.
#[derive(Debug, Default)]
pub struct StepCounts {
    captured: [AtomicU64; kind::COUNT],
    malformed: AtomicU64,
    /// Lost in the kernel under the step's aliases (folded in when each
    /// alias is removed).
    alias_lost: [AtomicU64; kind::COUNT],
}

struct Route {
    sink: Sink,
    cgroup: PathBuf,
    /// A cgroup attributed to a step ([`EbpfBackend::add_alias`]: the
    /// BuildKit engine window), not a step's own.
    alias: bool,
    counts: Arc<StepCounts>,
    streams: Mutex<Streams>,
    _links: Option<probes::net::StepLinks>,
}

type Routes = Arc<RwLock<HashMap<u64, Route>>>;

struct Maps {
    steps: BpfHashMap<MapData, u64, u32>,
    loss: PerCpuHashMap<MapData, u64, StepLoss>,
    counters: PerCpuArray<MapData, u64>,
}

#[derive(Default)]
struct Flush {
    requested: AtomicU64,
    done: Mutex<u64>,
    cv: Condvar,
}

/// The loaded, attached probes.
pub struct EbpfBackend {
    ebpf: Mutex<Ebpf>,
    net: bool,
    maps: Mutex<Maps>,
    routes: Routes,
    flush: Arc<Flush>,
    stop: Arc<AtomicBool>,
    consumer: Option<JoinHandle<()>>,
    /// Hooks and limitations, decided at load.
    info: CaptureInfo,
    step_level: u32,
    /// Cgroups traced as a step's ([`EbpfBackend::add_alias`]).
    aliases: alias::Aliases,
}

impl EbpfBackend {
    /// Loads and attaches the probes. Step cgroups will be at `step_level`
    /// (their depth below the cgroup2 root).
    pub fn load(step_level: u32) -> Result<EbpfBackend, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        tracing::debug!("loading the eBPF probes");
        let btf = btf::Btf::from_sys().map_err(EbpfError::NoBtf)?;
        let tracefs = loader::tracefs().ok_or(EbpfError::NoTracefs)?;
        let offs = offsets::compute(&btf, &tracefs)?;
        #[cfg(debug_assertions)]
        let offs = inject_fault(offs);
        tracing::debug!(?offs, "kernel offsets from BTF");
        let moves_in_kernel = offs.cgroup_level != cilock_abi::Offsets::ABSENT
            && (offs.cgroup_ancestors != cilock_abi::Offsets::ABSENT
                || offs.cgroup_ancestor_ids != cilock_abi::Offsets::ABSENT);
        // The parsed BTF (tens of MiB) is not needed any more.
        drop(btf);
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offs, true)
            .override_global("STEP_LEVEL", &step_level, true)
            .override_global("SYS_CONFIG", &sysconfig::sys_config(&tracefs)?, true)
            .load(OBJECT)?;

        let mut info = CaptureInfo {
            kind: BackendKind::Ebpf,
            reason: String::new(),
            hooks: Vec::new(),
            limitations: Vec::new(),
            counting: Counting::PerKind,
        };
        let file_open = probes::file::attach_open(&mut ebpf, &tracefs)?;
        let fexit = file_open.fexit;
        info.set_hook(Concern::FileOpen, file_open.how);
        probes::process::attach(&mut ebpf, &mut info)?;
        probes::cgroup::attach(&mut ebpf, &mut info)?;
        let closes = probes::file::load_written(&mut ebpf, &tracefs, &mut info);
        let mut net = probes::net::enabled();
        if net {
            // Without them the file and process trace still works: say so
            // in the hooks rather than fall back to ptrace.
            if let Err(e) = probes::net::load(&mut ebpf, &tracefs, &mut info) {
                tracing::warn!("network and suspicious-syscall probes unavailable: {e}");
                info.set_hook(Concern::Network, format!("unavailable: {e}"));
                net = false;
            }
        }
        let logger = kernel_log::logger(&mut ebpf);
        info.set_hook(
            Concern::StepFilter,
            format!("bpf_get_current_ancestor_cgroup_id({step_level}) in STEPS"),
        );
        if !fexit {
            info.set_hook(Concern::Fentry, probes::file::probe_fentry());
        }
        info.limitations = limitations(fexit, closes, net, moves_in_kernel);

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                what: name,
                source: aya::maps::MapError::InvalidName {
                    name: name.to_string(),
                },
            })
        };
        let maps = Maps {
            steps: BpfHashMap::try_from(take(&mut ebpf, "STEPS")?).map_err(map_err("STEPS"))?,
            loss: PerCpuHashMap::try_from(take(&mut ebpf, "STEP_LOSS")?)
                .map_err(map_err("STEP_LOSS"))?,
            counters: PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)
                .map_err(map_err("COUNTERS"))?,
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_err("EVENTS"))?;

        let routes: Routes = Arc::default();
        let flush = Arc::new(Flush::default());
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (routes, flush, stop) = (routes.clone(), flush.clone(), stop.clone());
            std::thread::Builder::new()
                .name("cilock-ringbuf".into())
                .spawn(move || consume(ring, logger, routes, flush, stop))
                .map_err(EbpfError::Thread)?
        };
        // Loading (BTF parse, ELF relocation) leaves freed heap behind: give
        // it back so the idle daemon stays small.
        // SAFETY: malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
        Ok(EbpfBackend {
            ebpf: Mutex::new(ebpf),
            net,
            maps: Mutex::new(maps),
            routes,
            flush,
            stop,
            consumer: Some(consumer),
            info,
            step_level,
            aliases: alias::Aliases::default(),
        })
    }

    /// The cgroup level steps must be created at.
    pub fn step_level(&self) -> u32 {
        self.step_level
    }

    /// Starts tracing the step whose cgroup is `cgroup`.
    pub fn register(&self, cgroup: &Cgroup, sink: Sink) -> Result<Arc<StepCounts>, EbpfError> {
        let counts = Arc::new(StepCounts::default());
        // Socket hooks and packet capture belong to the step cgroup.
        let links = if self.net {
            let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
            Some(probes::net::attach_step(&mut ebpf, cgroup.path())?)
        } else {
            None
        };
        if let Ok(mut r) = self.routes.write() {
            r.insert(
                cgroup.id(),
                Route {
                    sink,
                    cgroup: cgroup.path().to_path_buf(),
                    alias: false,
                    counts: counts.clone(),
                    streams: Mutex::default(),
                    _links: links,
                },
            );
        }
        let inserted = {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let _ = maps.loss.remove(&cgroup.id());
            maps.steps
                .insert(cgroup.id(), 1, 0)
                .map_err(map_err("STEPS insert"))
        };
        if let Err(e) = inserted {
            // Roll everything back: the route (and with it the step's
            // cgroup links, detached when dropped) and the loss entry.
            if let Ok(mut r) = self.routes.write() {
                r.remove(&cgroup.id());
            }
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let _ = maps.loss.remove(&cgroup.id());
            return Err(e);
        }
        Ok(counts)
    }

    /// Stops tracing the step, delivers everything it emitted to its
    /// recorder, and returns captured/lost counts per kind.
    pub fn unregister(&self, cgroup_id: u64) -> Result<BTreeMap<String, Count>, EbpfError> {
        // The step's aliases leave the kernel with it.
        let aliases = self.aliases.take_step(cgroup_id);
        self.remove_from_kernel(&aliases);
        let removed = {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.steps
                .remove(&cgroup_id)
                .map_err(map_err("STEPS remove"))
        };
        if let Err(e) = removed {
            self.drop_alias_routes(&aliases);
            // Never leave the route (and its links) behind.
            if let Ok(mut r) = self.routes.write() {
                r.remove(&cgroup_id);
            }
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let _ = maps.loss.remove(&cgroup_id);
            return Err(e);
        }
        // Programs that passed the filter before the removal finish within
        // microseconds; then everything they emitted is in the ring.
        std::thread::sleep(Duration::from_millis(20));
        self.flush();
        self.drop_alias_routes(&aliases);
        let route = self
            .routes
            .write()
            .ok()
            .and_then(|mut r| r.remove(&cgroup_id))
            .ok_or(EbpfError::UnknownStep(cgroup_id))?;
        let mut lost = [0u64; kind::COUNT];
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(per_cpu) = maps.loss.get(&cgroup_id, 0) {
                for l in per_cpu.iter() {
                    for (k, v) in l.lost.iter().enumerate() {
                        lost[k] += v;
                    }
                }
            }
            let _ = maps.loss.remove(&cgroup_id);
        }
        let mut out = BTreeMap::new();
        for k in 1..kind::COUNT as u32 {
            if kind::name(k) == "unknown" {
                continue;
            }
            out.insert(
                kind::name(k).to_string(),
                Count {
                    captured: route.counts.captured[k as usize].load(Ordering::Relaxed),
                    lost: lost[k as usize]
                        + route.counts.alias_lost[k as usize].load(Ordering::Relaxed),
                },
            );
        }
        let malformed = route.counts.malformed.load(Ordering::Relaxed);
        if malformed > 0 {
            out.insert(
                "malformed".to_string(),
                Count {
                    captured: 0,
                    lost: malformed,
                },
            );
        }
        Ok(out)
    }

    /// Waits until the consumer has drained everything in the ring now.
    pub fn flush(&self) {
        let want = self.flush.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.flush.done.lock().unwrap_or_else(|e| e.into_inner());
        while *done < want {
            let (d, _) = self
                .flush
                .cv
                .wait_timeout(done, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            done = d;
        }
    }

    /// Global (all steps) emitted and lost counts per kind, from the kernel.
    pub fn global_counters(&self) -> BTreeMap<String, Count> {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BTreeMap::new();
        for k in 1..kind::COUNT as u32 {
            if kind::name(k) == "unknown" {
                continue;
            }
            let sum = |i: u32| {
                maps.counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0)
            };
            out.insert(
                kind::name(k).to_string(),
                Count {
                    captured: sum(k * 2),
                    lost: sum(k * 2 + 1),
                },
            );
        }
        out
    }
}

/// What the eBPF backend, with the hooks it got, cannot see (attested):
/// `fexit` (the file-open hook is fexit), `closes` (the close stamps
/// attached), `net` (the network probes loaded), `moves_in_kernel` (the
/// kernel places cgroup moves itself).
fn limitations(fexit: bool, closes: bool, net: bool, moves_in_kernel: bool) -> Vec<Limitation> {
    let mut v = Vec::new();
    if !fexit {
        v.push(Limitation::fixed("io_uring opens (IORING_OP_OPENAT) do not pass the syscall tracepoints and are not recorded (io_uring_setup is)"));
    }
    v.push(Limitation::fixed("a process moved out of the step's cgroup (by itself, by another process, or created outside it with clone3(CLONE_INTO_CGROUP)) is marked leftStep, with a cgroup_leave event on the process that moved or created it; it is not traced after the move: what it does afterwards is not in this step (in another active step it is recorded there, marked joinedStep); the kernel remembers the step of up to 65536 live step processes, and a process beyond that is counted in trace.events.cgroup_move.lost (its move may go unrecorded)"));
    v.push(Limitation::fixed("a process that comes into the step's cgroup from outside is traced from its arrival and marked joinedStep (joinedFrom says from where); what it did before is not in this step"));
    if !moves_in_kernel {
        v.push(Limitation::fixed("this kernel's BTF lacks cgroup.level/ancestors: moves are placed in user space (a move into a cgroup removed before the daemon looked counts as leaving), and a process joining the step is marked joinedStep only as of unknown origin"));
    }
    v.push(Limitation::fixed("reads and writes through memory mappings or already-open descriptors are not separate events"));
    v.push(Limitation::fixed("paths longer than PATH_MAX (4096 bytes) keep only their last components behind /…/ and are not hashed (unhashedOpens: path truncated); two such paths whose kept tails agree share one entry"));
    if !closes {
        v.push(Limitation::fixed("closes of written files are not observed: written files get no digest (unhashedOpens says so)"));
    }
    v.push(Limitation::fixed("a written file closed by close-on-exec at an exec, or held at an fd above 65535 at exit, has no observable close: it gets no digest (unhashedOpens says so)"));
    if net {
        v.extend(probes::net::limitations());
    } else {
        v.push(Limitation::fixed("network, DNS, TLS and suspicious-syscall probes are not loaded (see trace.hooks.network)"));
    }
    v
}

/// The backend is shared with the taps of its steps (each unregisters its
/// step at stop).
impl Backend for Arc<EbpfBackend> {
    fn info(&self) -> &CaptureInfo {
        &self.info
    }

    fn start(&self, step: StepTarget<'_>, sink: Sink) -> Result<Box<dyn Tap>, BackendError> {
        self.register(step.cgroup, sink)?;
        Ok(Box::new(EbpfTap {
            backend: self.clone(),
            cgroup_id: step.cgroup.id(),
        }))
    }
}

/// One step registered in the kernel's `STEPS` map.
struct EbpfTap {
    backend: Arc<EbpfBackend>,
    cgroup_id: u64,
}

impl Tap for EbpfTap {
    fn stop(self: Box<Self>) -> Result<EventCounts, BackendError> {
        Ok(EventCounts(self.backend.unregister(self.cgroup_id)?))
    }

    fn alias(&self, cgroup: &Cgroup) -> Result<Box<dyn Send>, BackendError> {
        Ok(Box::new(self.backend.add_alias(self.cgroup_id, cgroup)?))
    }
}

impl Drop for EbpfBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.consumer.take() {
            let _ = h.join();
        }
    }
}

/// Test builds only: `CILOCK_TEST_FAULT=wrong-offset` corrupts one BTF
/// offset (`dentry.d_name`), so every walked path is wrong. The kernel
/// matrix (`cargo xtask vm-test --inject-fault wrong-offset`) uses it to
/// prove the ground-truth tests catch a layout error on every kernel.
#[cfg(debug_assertions)]
fn inject_fault(mut offs: cilock_abi::Offsets) -> cilock_abi::Offsets {
    if std::env::var("CILOCK_TEST_FAULT").is_ok_and(|v| v == "wrong-offset") {
        tracing::warn!("CILOCK_TEST_FAULT=wrong-offset: corrupting the dentry.d_name offset");
        offs.dentry_d_name += 8;
    }
    offs
}

fn consume(
    mut ring: RingBuf<MapData>,
    mut logger: Option<kernel_log::Logger>,
    routes: Routes,
    flush: Arc<Flush>,
    stop: Arc<AtomicBool>,
) {
    let clock = Clock::now();
    // What the decoder cannot know: the daemon's pid and pidfd inode, and
    // /proc's answer for a pidfd (built once, not per record).
    let host = Host {
        daemon_pid: std::process::id(),
        daemon_pidfd_inode: sysconfig::daemon_pidfd_inode(),
        pidfd_target: &crate::trace::procfs::pidfd_target,
    };
    // Where a process joining a step went (a container's cgroup): resolved
    // while the cgroup exists.
    let mut ids = crate::cgroup::Hierarchy::find()
        .ok()
        .and_then(|h| cgroup_id::CgroupIds::open(&h.mount).ok());
    let mut batch = Vec::with_capacity(BATCH);
    let fd = ring.as_raw_fd();
    let log_fd = logger.as_ref().map_or(-1, kernel_log::logger_fd);
    loop {
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
        let req = flush.requested.load(Ordering::SeqCst);
        loop {
            // A batch decoded, and what its joins need from the system
            // found, before the routes are locked once for the batch (a
            // begin or an end waits for that lock).
            batch.clear();
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                let rec = decode::decode(&item, &clock, &host);
                let joined = Joined::of(&rec, &host, ids.as_mut());
                let header_step = item
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes);
                batch.push((rec, header_step, joined));
            }
            if batch.is_empty() {
                break;
            }
            let routes = routes.read().unwrap_or_else(|e| e.into_inner());
            for (rec, header_step, joined) in batch.drain(..) {
                route(rec, header_step, &routes, &host, joined);
            }
        }
        {
            let mut done = flush.done.lock().unwrap_or_else(|e| e.into_inner());
            if *done < req {
                *done = req;
                flush.cv.notify_all();
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut pfd = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: log_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Wakeups are batched in the kernel; the timeout bounds latency.
        let timeout = if flush.requested.load(Ordering::SeqCst) > req {
            0
        } else {
            20
        };
        // SAFETY: valid pollfds (a negative fd is ignored by poll).
        unsafe { libc::poll(pfd.as_mut_ptr(), 2, timeout) };
    }
}

/// Hands captured payload to the step's recorder: TCP stream bytes in
/// order (once each), datagrams as they are.
fn deliver_payload(r: &Route, p: decode::Payload) {
    tracing::trace!(pid = p.pid, fd = p.fd, dst = %p.dst, tcp = p.tcp, egress = p.egress, off = p.stream_off, len = p.bytes.len(), "payload");
    let (bytes, stream) = if p.tcp {
        let mut s = r.streams.lock().unwrap_or_else(|e| e.into_inner());
        match s.push(p.step_cgroup, p.cookie, p.stream_off, &p.bytes) {
            Some(b) if !b.is_empty() => (b, true),
            _ => return,
        }
    } else {
        (p.bytes, false)
    };
    if p.egress {
        r.sink.push(TraceEvent::Egress {
            pid: p.pid,
            fd: p.fd,
            dst: Some(p.dst),
            stream,
            bytes,
            time: p.time,
        });
    } else {
        r.sink.push(TraceEvent::Ingress {
            pid: p.pid,
            src: p.src,
            stream,
            bytes,
            time: p.time,
        });
    }
}

/// What a join record needs from the system, read before the routes are
/// locked: the path of the cgroup the process came into and, when it moved
/// in (not created there), what `/proc` shows of it.
#[derive(Default)]
struct Joined {
    dst: Option<PathBuf>,
    running: Option<cilock_trace::Running>,
}

impl Joined {
    fn of(
        rec: &Result<Record, decode::DecodeError>,
        host: &Host,
        ids: Option<&mut cgroup_id::CgroupIds>,
    ) -> Joined {
        match rec {
            Ok(Record::CgroupJoin {
                moved,
                by,
                dst,
                flags,
                ..
            }) if *by != host.daemon_pid => Joined {
                dst: ids.and_then(|i| i.path_of_cached(*dst).ok()),
                running: (flags & move_flags::AT_FORK == 0)
                    .then(|| crate::trace::procfs::running(*moved)),
            },
            _ => Joined::default(),
        }
    }
}

/// Records routed under one lock of the routes, at most.
const BATCH: usize = 256;

/// Routes one decoded record; `header_step` is the step cgroup id of the
/// record's header (bytes 16..24), when it has one, to count a malformed
/// record against its step.
fn route(
    rec: Result<Record, decode::DecodeError>,
    header_step: Option<u64>,
    routes: &HashMap<u64, Route>,
    host: &Host,
    joined: Joined,
) {
    match rec {
        Ok(Record::Event {
            step_cgroup,
            kind: k,
            event,
        }) => {
            if let Some(r) = routes.get(&step_cgroup) {
                if let Some(c) = r.counts.captured.get(k as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                r.sink.push(event);
            }
        }
        Ok(Record::CgroupMove {
            step_cgroup,
            moved,
            by,
            dst,
            time,
            flags,
        }) => {
            if let Some(r) = routes.get(&step_cgroup) {
                r.counts.captured[kind::CGROUP_MOVE as usize].fetch_add(1, Ordering::Relaxed);
                // The kernel placed the destination outside the step, unless
                // it could not tell.
                let inside = flags & move_flags::DST_UNKNOWN != 0
                    && Cgroup::open(&r.cgroup)
                        .map(|c| c.subtree_ids().contains(&dst))
                        .unwrap_or(false);
                if !inside {
                    r.sink.push(if flags & move_flags::AT_FORK != 0 {
                        TraceEvent::BornOutside {
                            pid: moved,
                            parent: by,
                            time,
                        }
                    } else {
                        TraceEvent::LeftStep {
                            pid: moved,
                            by,
                            time,
                        }
                    });
                }
            }
        }
        Ok(Record::CgroupJoin {
            step_cgroup,
            moved,
            by,
            dst: _,
            src_step,
            flags,
            time,
        }) => {
            if let Some(r) = routes.get(&step_cgroup) {
                // The daemon's own moves (a step's root at begin, processes
                // returned at a step's end) are not joins: roots are
                // registered by the engine.
                if by == host.daemon_pid {
                    return;
                }
                r.counts.captured[kind::CGROUP_JOIN as usize].fetch_add(1, Ordering::Relaxed);
                let from = match routes.get(&src_step) {
                    _ if src_step == 0 => "outside the daemon's steps".to_string(),
                    Some(src) => format!("another step (cgroup {})", src.cgroup.display()),
                    None => format!("a step that has ended (cgroup id {src_step})"),
                };
                let at_birth = flags & move_flags::AT_FORK != 0;
                // The cgroup it came into, named under the route's cgroup
                // (a container's id), or under an alias of the same step
                // when it is in one (`buildkit/<name>`, see `step_relative`).
                let cgroup = joined.dst.and_then(|d| {
                    let (base, alias) = if d.starts_with(&r.cgroup) {
                        (&r.cgroup, r.alias)
                    } else {
                        routes
                            .values()
                            .find(|a| {
                                a.alias
                                    && Arc::ptr_eq(&a.counts, &r.counts)
                                    && d.starts_with(&a.cgroup)
                            })
                            .map(|a| (&a.cgroup, true))?
                    };
                    cgroup_id::step_relative(base, alias, &d)
                });
                r.sink.push(TraceEvent::JoinedStep {
                    pid: moved,
                    by,
                    from,
                    at_birth,
                    cgroup,
                    running: joined.running.filter(|_| !at_birth),
                    time,
                });
            }
        }
        Ok(Record::Payload(p)) => {
            if let Some(r) = routes.get(&p.step_cgroup) {
                r.counts.captured[kind::PAYLOAD as usize].fetch_add(1, Ordering::Relaxed);
                deliver_payload(r, p);
            }
        }
        Err(e) => {
            tracing::warn!("dropping {e}");
            // Attribute to the step when the header is readable.
            if let Some(r) = header_step.and_then(|id| routes.get(&id)) {
                r.counts.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: Vec<Limitation>) -> Vec<String> {
        CaptureInfo {
            kind: BackendKind::Ebpf,
            reason: String::new(),
            hooks: Vec::new(),
            limitations: v,
            counting: Counting::PerKind,
        }
        .limitation_texts()
    }

    /// The limitations follow the typed facts of the load, not hook prose.
    #[test]
    fn limitations_follow_what_attached() {
        let all = texts(limitations(true, true, true, true));
        assert!(!all
            .iter()
            .any(|l| l.starts_with("io_uring opens (IORING_OP_OPENAT)")));
        assert!(!all.iter().any(|l| l.starts_with("closes of written files")));
        assert!(!all.iter().any(|l| l.starts_with("this kernel's BTF lacks")));
        assert!(all.iter().any(|l| l.starts_with("sockets created before")));
        let none = texts(limitations(false, false, false, false));
        assert!(none[0].starts_with("io_uring opens (IORING_OP_OPENAT)"));
        assert!(none
            .iter()
            .any(|l| l.starts_with("closes of written files")));
        assert!(none
            .iter()
            .any(|l| l.starts_with("this kernel's BTF lacks")));
        assert!(none.last().is_some_and(
            |l| l.starts_with("network, DNS, TLS and suspicious-syscall probes are not loaded")
        ));
    }
}
