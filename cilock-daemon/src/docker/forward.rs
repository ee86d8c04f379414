//! Forwarding: one HTTP/1.1 server connection per client, one engine
//! connection per request; what each route does.
//!
//! Bodies stream both ways (image loads, pushes and build contexts are
//! never buffered): only a container-create body is read whole, bounded
//! at [`MAX_CREATE_BODY`] (413 beyond), and a create's answer (its `Id`).
//! A request answered `101` (attach, exec start, `/session`, `/grpc`) is
//! spliced byte for byte both ways once both sides have switched. An
//! engine that does not answer gets a 502; every refusal is a JSON
//! `{"message": …}` (what the docker CLI prints) and a log line.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use super::build_stream::BuildStream;
use super::engine_api;
use super::peer::{self, PeerCred};
use super::rewrite::{self, MAX_CREATE_BODY};
use super::route::{self, Route};
use super::{Container, ContainerBuild, Shared, StepRef};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every proxied message.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Largest buffered request head (headers included), in bytes.
const MAX_HEAD: usize = 256 * 1024;
/// A client that sends no complete request head for this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Who sent the requests of one connection, and its hijacked streams.
#[derive(Debug)]
pub(crate) struct Client {
    peer: PeerCred,
    step: Option<StepRef>,
    splices: Splices,
}

/// The hijacked streams of one connection, spliced in tasks of their own:
/// the connection's task waits for them before it ends (so a splice keeps
/// the connection's slot of [`super::MAX_CONNECTIONS`]), and aborts them
/// when it is itself aborted ([`super::Proxy::stop`], or the proxy dropped).
#[derive(Clone, Debug, Default)]
struct Splices(Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>);

impl Splices {
    fn spawn(&self, splice: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(splice);
    }

    /// Waits until every splice spawned so far has ended.
    async fn wait(&self) {
        let mut set = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        while set.join_next().await.is_some() {}
    }
}

/// Aborts a connection's splices when its task ends in any way.
struct AbortSplices(Splices);

impl Drop for AbortSplices {
    fn drop(&mut self) {
        self.0
             .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }
}

/// Serves one accepted connection.
pub(crate) async fn connection(stream: UnixStream, shared: Arc<Shared>) {
    let peer = match peer::peer_of(&stream) {
        Ok(p) => p,
        Err(e) => {
            warn!("docker proxy: cannot read the peer's credentials: {e}; closing");
            return;
        }
    };
    let engine = shared.cfg.engine.clone();
    let chain = tokio::task::spawn_blocking(move || peer::socket_chain(&engine)).await;
    let allowed = match chain {
        Ok(Ok(chain)) => peer::may_open(&peer, &chain),
        Ok(Err(e)) if peer.uid == 0 => {
            debug!("docker proxy: engine socket: {e}");
            Ok(())
        }
        Ok(Err(e)) => Err(format!(
            "cannot check access to the engine's socket {}: {e}",
            shared.cfg.engine.display()
        )),
        Err(e) => Err(format!("access check failed: {e}")),
    };
    if let Err(why) = allowed {
        warn!(
            pid = peer.pid,
            uid = peer.uid,
            "docker proxy: refused: {why}"
        );
        refuse_connection(stream, why).await;
        return;
    }
    let step = if peer.pid == 0 {
        None
    } else {
        let dir = shared.dir.clone();
        let pid = peer.pid;
        match tokio::task::spawn_blocking(move || dir.step_of(pid)).await {
            Ok(step) => step,
            Err(e) => {
                // Never serve a client as "outside" when its step is unknown.
                warn!(pid, "docker proxy: finding the client's step failed: {e}");
                refuse_connection(stream, format!("cannot tell which step pid {pid} is in")).await;
                return;
            }
        }
    };
    debug!(pid = peer.pid, uid = peer.uid, step = ?step.as_ref().map(|s| &s.name), "docker proxy: connection");
    let splices = Splices::default();
    // Declared before the service: dropped (aborting the splices) whatever
    // ends this task, even when other references to the client remain.
    let _abort = AbortSplices(splices.clone());
    let client = Arc::new(Client {
        peer,
        step,
        splices: splices.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared, &client).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!("docker proxy: connection ended: {e}");
    }
    // An upgraded connection ends here, handing its socket to a splice:
    // the connection (and its slot) lasts as long as the splice does.
    splices.wait().await;
}

/// Answers the connection's first request with 403 and closes it.
async fn refuse_connection(stream: UnixStream, why: String) {
    let message = format!("cilock docker proxy: access denied: {why}");
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let m = message.clone();
        async move { Ok::<_, Infallible>(json_error(StatusCode::FORBIDDEN, &m)) }
    });
    let _ = tokio::time::timeout(
        HEADER_TIMEOUT,
        hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service),
    )
    .await;
}

/// A JSON error answer, as the engine words its own.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&serde_json::json!({ "message": message })).unwrap_or_default();
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn boxed(b: Incoming) -> ProxyBody {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// Handles one request.
async fn handle(req: Request<Incoming>, shared: &Shared, client: &Client) -> Response<ProxyBody> {
    let route = match route::classify(req.method().as_str(), req.uri().path(), req.uri().query()) {
        Ok(r) => r,
        Err(m) => return refuse(client, StatusCode::BAD_REQUEST, &m),
    };
    match route {
        Route::Other => forward(req.map(boxed), shared, client).await,
        Route::LegacyStart => {
            if has_body(&req) {
                refuse(
                    client,
                    StatusCode::FORBIDDEN,
                    "a HostConfig in a start request (API below 1.24) is refused by the cilock proxy: set it at create",
                )
            } else {
                forward(req.map(boxed), shared, client).await
            }
        }
        Route::Create => match &client.step {
            Some(step) => create_in_step(req, shared, client, step).await,
            None => create_outside(req, shared, client).await,
        },
        Route::Build { buildkit } => {
            if req
                .headers()
                .get_all(CONTENT_TYPE)
                .iter()
                .any(|v| route::is_form_content_type(&String::from_utf8_lossy(v.as_bytes())))
            {
                return refuse(
                    client,
                    StatusCode::BAD_REQUEST,
                    "a build request with a form body is refused by the cilock proxy (its options must be in the query)",
                );
            }
            match &client.step {
                Some(step) => build_in_step(req, shared, client, step, buildkit).await,
                None => {
                    let facts = rewrite::build_facts(req.uri().query().unwrap_or(""));
                    if let Some(r) = refuse_inside_steps(
                        client,
                        shared,
                        &facts.cgroup_parents,
                        "cgroupparent",
                        "builds",
                    ) {
                        return r;
                    }
                    forward(req.map(boxed), shared, client).await
                }
            }
        }
    }
}

/// A 403 when a caller outside any step names a cgroup parent (`key`)
/// inside cilock's steps: only a step's own `what` run there.
fn refuse_inside_steps(
    client: &Client,
    shared: &Shared,
    parents: &[String],
    key: &str,
    what: &str,
) -> Option<Response<ProxyBody>> {
    let p = parents.iter().find(|p| shared.dir.inside_steps(p))?;
    Some(refuse(
        client,
        StatusCode::FORBIDDEN,
        &format!("{key} {p:?} is inside cilock's steps: only a step's own {what} run there"),
    ))
}

fn refuse(client: &Client, status: StatusCode, message: &str) -> Response<ProxyBody> {
    warn!(
        pid = client.peer.pid,
        uid = client.peer.uid,
        step = ?client.step.as_ref().map(|s| &s.name),
        status = status.as_u16(),
        "docker proxy: refused: {message}"
    );
    json_error(status, &format!("cilock docker proxy: {message}"))
}

fn has_body<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Sends `req` to the engine on a new connection; splices the two
/// connections when the engine switches protocols (a task among the
/// client connection's [`Splices`]).
async fn forward(
    mut req: Request<ProxyBody>,
    shared: &Shared,
    client: &Client,
) -> Response<ProxyBody> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match send(req, shared).await {
        Ok(r) => r,
        Err(m) => return json_error(StatusCode::BAD_GATEWAY, &m),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let engine_upgrade = hyper::upgrade::on(&mut resp);
        client.splices.spawn(async move {
            let (c, e) = match tokio::join!(client_upgrade, engine_upgrade) {
                (Ok(c), Ok(e)) => (c, e),
                (c, e) => {
                    debug!(
                        "docker proxy: upgrade failed: client {:?}, engine {:?}",
                        c.err(),
                        e.err()
                    );
                    return;
                }
            };
            let mut c = TokioIo::new(c);
            let mut e = TokioIo::new(e);
            if let Err(err) = tokio::io::copy_bidirectional(&mut c, &mut e).await {
                debug!("docker proxy: hijacked stream ended: {err}");
            }
        });
        return resp.map(|_| full(Bytes::new()));
    }
    resp.map(boxed)
}

async fn send(mut req: Request<ProxyBody>, shared: &Shared) -> Result<Response<Incoming>, String> {
    // The client got its `100 Continue` from this side already.
    req.headers_mut().remove(hyper::header::EXPECT);
    let engine = &shared.cfg.engine;
    let stream = UnixStream::connect(engine).await.map_err(|e| {
        format!(
            "cilock docker proxy: the engine at {} is not reachable: {e}",
            engine.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cilock docker proxy: HTTP handshake with the engine: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!("docker proxy: engine connection ended: {e}");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("cilock docker proxy: the engine did not answer: {e}"))
}

/// Most bytes of an oversized create body read (and dropped) before the
/// 413, so that the client, still sending, reads the answer rather than a
/// broken pipe.
const MAX_DRAIN: u64 = 16 << 20;

/// Reads a create body whole, bounded.
async fn read_create_body(
    req: Request<Incoming>,
    client: &Client,
) -> Result<(hyper::http::request::Parts, Bytes), Response<ProxyBody>> {
    let too_big = || {
        refuse(
            client,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the create body is larger than {MAX_CREATE_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN) {
        return Err(too_big());
    }
    let (parts, mut body) = req.into_parts();
    let mut buf = bytes::BytesMut::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            refuse(
                client,
                StatusCode::BAD_REQUEST,
                &format!("reading the create body: {e}"),
            )
        })?;
        if let Some(d) = frame.data_ref() {
            total += d.len() as u64;
            if total > MAX_DRAIN {
                return Err(too_big());
            }
            if total <= MAX_CREATE_BODY as u64 {
                buf.extend_from_slice(d);
            }
        }
    }
    if total > MAX_CREATE_BODY as u64 {
        return Err(too_big());
    }
    Ok((parts, buf.freeze()))
}

fn with_body(mut parts: hyper::http::request::Parts, body: Bytes) -> Request<ProxyBody> {
    frame_whole(&mut parts.headers, &body);
    Request::from_parts(parts, full(body))
}

/// The framing of a body sent whole: its length, no chunking.
fn frame_whole(headers: &mut hyper::HeaderMap, body: &Bytes) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
}

/// A create from outside any step: forwarded unchanged unless it names a
/// cgroup inside the steps tree.
async fn create_outside(
    req: Request<Incoming>,
    shared: &Shared,
    client: &Client,
) -> Response<ProxyBody> {
    let (parts, body) = match read_create_body(req, client).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !body.is_empty() {
        match rewrite::scan_create(&body) {
            Ok(facts) => {
                if let Some(r) = refuse_inside_steps(
                    client,
                    shared,
                    &facts.cgroup_parents,
                    "CgroupParent",
                    "containers",
                ) {
                    return r;
                }
            }
            Err(m) => return refuse(client, StatusCode::BAD_REQUEST, &m),
        }
    }
    // Forwarded as received (only the framing may change: sent whole).
    forward(with_body(parts, body), shared, client).await
}

/// The cgroup parent the engine must use for `step`.
async fn placement(
    shared: &Shared,
    step: &StepRef,
) -> Result<(String, bool), (StatusCode, String)> {
    let driver = shared
        .driver
        .get_or_try_init(|| engine_api::cgroup_driver(&shared.cfg.engine))
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("the engine's cgroup driver is unknown: {e}"),
            )
        })?;
    if driver == "systemd" {
        match &step.slice {
            Some(s) => Ok((s.clone(), true)),
            None => Err((
                StatusCode::CONFLICT,
                format!(
                    "the engine uses the systemd cgroup driver, which takes only a slice as cgroup parent, and step {:?} is not a systemd slice (set cilock's cgroup_parent to a *.slice)",
                    step.name
                ),
            )),
        }
    } else {
        Ok((step.cgroup.clone(), false))
    }
}

/// A create from a step: the step's cgroup is forced as the parent; the
/// container is recorded once the engine created it.
async fn create_in_step(
    req: Request<Incoming>,
    shared: &Shared,
    client: &Client,
    step: &StepRef,
) -> Response<ProxyBody> {
    let (parent, systemd) = match placement(shared, step).await {
        Ok(p) => p,
        Err((status, m)) => return refuse(client, status, &m),
    };
    let (parts, body) = match read_create_body(req, client).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (body, facts) = match rewrite::rewrite_create(&body, &parent) {
        Ok(x) => x,
        Err(m) => return refuse(client, StatusCode::BAD_REQUEST, &m),
    };
    info!(
        pid = client.peer.pid,
        step = %step.name,
        image = %facts.image,
        "docker proxy: create: CgroupParent {:?} -> {parent:?}",
        facts.cgroup_parents.last().map(String::as_str).unwrap_or("")
    );
    let resp = match send(with_body(parts, Bytes::from(body)), shared).await {
        Ok(r) => r,
        Err(m) => return json_error(StatusCode::BAD_GATEWAY, &m),
    };
    if resp.status() != StatusCode::CREATED {
        return resp.map(boxed);
    }
    let (mut parts, body) = resp.into_parts();
    let body = match Limited::new(body, MAX_CREATE_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                &format!("cilock docker proxy: reading the engine's create answer: {e}"),
            )
        }
    };
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("Id").and_then(|i| i.as_str()).map(str::to_string))
        .unwrap_or_default();
    if engine_api::valid_id(&id) {
        let c = describe_container(shared, client, step, &id, &facts.image, &parent, systemd).await;
        shared.dir.record_container(step, c);
    } else {
        warn!(step = %step.name, "docker proxy: the engine's create answer has no valid Id");
    }
    frame_whole(&mut parts.headers, &body);
    Response::from_parts(parts, full(body))
}

/// The record of a container the step created, from the engine's inspect.
async fn describe_container(
    shared: &Shared,
    client: &Client,
    step: &StepRef,
    id: &str,
    image_ref: &str,
    parent: &str,
    systemd: bool,
) -> Container {
    let engine = &shared.cfg.engine;
    let mut c = Container {
        id: id.to_string(),
        engine: "docker".into(),
        image_ref: image_ref.to_string(),
        attribution: "cgroup-parent".into(),
        created_by: client.peer.pid,
        ..Container::default()
    };
    match engine_api::get_json(engine, &format!("/containers/{id}/json")).await {
        Ok(v) => {
            let f = engine_api::container_facts(&v);
            if engine_api::valid_id(&f.id) {
                c.id = f.id;
            }
            c.cmd = f.cmd;
            c.mounts = f.mounts;
            if f.cgroup_parent != parent {
                c.attribution = "none".into();
                c.reason = format!(
                    "the engine stored CgroupParent {:?}, not the step's {parent:?}",
                    f.cgroup_parent
                );
            }
            if engine_api::valid_image_id(&f.image_id) {
                match engine_api::get_json(engine, &format!("/images/{}/json", f.image_id)).await {
                    Ok(img) => c.image_digests = engine_api::image_digests(&img),
                    Err(e) => warn!("docker proxy: image inspect: {e}"),
                }
            }
            c.image_id = f.image_id;
        }
        Err(e) => warn!(step = %step.name, "docker proxy: container inspect: {e}"),
    }
    c.cgroup = if systemd {
        format!("{}/docker-{}.scope", step.cgroup, c.id)
    } else {
        format!("{}/{}", step.cgroup, c.id)
    };
    c
}

/// A build from a step: classic builds get the step's cgroup as
/// `cgroupparent`; BuildKit builds run in the engine window. The answer
/// streams to the client while it is parsed; the build is recorded when
/// it ends (or the client goes away).
async fn build_in_step(
    mut req: Request<Incoming>,
    shared: &Shared,
    client: &Client,
    step: &StepRef,
    buildkit: bool,
) -> Response<ProxyBody> {
    let (parent, _) = match placement(shared, step).await {
        Ok(p) => p,
        Err((status, m)) => return refuse(client, status, &m),
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let facts = rewrite::build_facts(&query);
    let new_query = rewrite::rewrite_build_query(&query, &parent);
    let uri = format!("{}?{new_query}", req.uri().path());
    match uri.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(e) => {
            return refuse(
                client,
                StatusCode::BAD_REQUEST,
                &format!("bad build query: {e}"),
            )
        }
    }
    let n = shared.builds.fetch_add(1, Ordering::Relaxed) + 1;
    let mut build = ContainerBuild {
        id: format!("build-{n}"),
        builder: if buildkit { "buildkit" } else { "classic" }.into(),
        attribution: "cgroup-parent".into(),
        tags: facts.tags,
        dockerfile: facts.dockerfile,
        created_by: client.peer.pid,
        ..ContainerBuild::default()
    };
    let mut hold = Held::default();
    if buildkit {
        // The engine window: one BuildKit build at a time, attributed to
        // this step while it runs.
        let lock = shared.buildkit.clone().lock_owned().await;
        hold.0.push(Box::new(lock));
        build.attribution = "engine-window".into();
        match &shared.mount {
            Some(mount) => {
                let cgroup = mount.join(&shared.cfg.buildkit_cgroup);
                let dir = shared.dir.clone();
                let s = step.clone();
                let c = cgroup.clone();
                match tokio::task::spawn_blocking(move || dir.attribute_cgroup(&s, &c)).await {
                    Ok(Ok(guard)) => hold.0.push(guard),
                    Ok(Err(e)) => {
                        build.attribution = "none".into();
                        build.reason = format!(
                            "the engine's BuildKit cgroup {} could not be attributed to the step: {e}",
                            cgroup.display()
                        );
                    }
                    Err(e) => {
                        build.attribution = "none".into();
                        build.reason = format!("attributing the BuildKit cgroup failed: {e}");
                    }
                }
            }
            None => {
                build.attribution = "none".into();
                build.reason = "the daemon found no cgroup2 mount".into();
            }
        }
    }
    info!(
        pid = client.peer.pid,
        step = %step.name,
        build = %build.id,
        builder = %build.builder,
        attribution = %build.attribution,
        "docker proxy: build"
    );
    let resp = match send(req.map(boxed), shared).await {
        Ok(r) => r,
        Err(m) => return json_error(StatusCode::BAD_GATEWAY, &m),
    };
    if !resp.status().is_success() {
        return resp.map(boxed);
    }
    let dir = shared.dir.clone();
    let step = step.clone();
    resp.map(move |body| {
        Watched {
            inner: boxed(body),
            parser: BuildStream::default(),
            done: Some(Box::new(move |p: BuildStream| {
                if p.skipped_lines > 0 || p.dropped_containers > 0 {
                    debug!(
                        build = %build.id,
                        skipped = p.skipped_lines,
                        dropped = p.dropped_containers,
                        "docker proxy: build stream lines skipped"
                    );
                }
                if p.dropped_containers > 0 {
                    warn!(
                        build = %build.id,
                        dropped = p.dropped_containers,
                        "docker proxy: the build ran more RUN containers than are recorded"
                    );
                }
                build.containers = p.containers;
                build.image_id = p.image_id;
                info!(step = %step.name, build = %build.id, image = %build.image_id, runs = build.containers.len(), "docker proxy: build recorded");
                dir.record_build(&step, build);
            })),
            _hold: hold,
        }
        .boxed_unsync()
    })
}

type Done = Box<dyn FnOnce(BuildStream) + Send>;

/// What a build holds while it runs (the engine lock, then the cgroup
/// alias), released in reverse order — the alias ends before the next
/// build can take the lock — and off the runtime's workers, since ending
/// an alias drains the ring buffer (tens of milliseconds).
#[derive(Default)]
struct Held(Vec<Box<dyn Send>>);

impl Drop for Held {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.0);
        if held.is_empty() {
            return;
        }
        let release = move || {
            let mut held = held;
            while let Some(g) = held.pop() {
                drop(g);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

/// A build's answer on its way to the client, parsed as it passes; what
/// was seen is recorded when it ends or is dropped, and the engine window
/// (if any) is held until then.
struct Watched {
    inner: ProxyBody,
    parser: BuildStream,
    done: Option<Done>,
    _hold: Held,
}

impl Watched {
    fn end(&mut self) {
        if let Some(done) = self.done.take() {
            let mut p = std::mem::take(&mut self.parser);
            p.finish();
            done(p);
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.parser.feed(d);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.end(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.end();
    }
}
