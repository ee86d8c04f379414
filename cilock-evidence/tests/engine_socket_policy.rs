//! `examples/policies/no-engine-socket.rego`: a step process connecting to
//! the container engine's own socket (not cilock's Docker proxy), under any
//! spelling of the path the policy can resolve, or a container given that
//! socket by a mount, is denied; the proxy, other sockets and network
//! connections are not its business.

use cilock_evidence::policy::rego::{CompiledRego, RegoModule};
use serde_json::{json, Value};

fn module() -> CompiledRego {
    let name = "no-engine-socket.rego";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies")
        .join(name);
    CompiledRego::compile(&[RegoModule {
        name: name.into(),
        source: std::fs::read_to_string(path).unwrap(),
    }])
    .unwrap()
}

/// A command-run with one process (pid 7) whose only connection is a Unix
/// `syscall` to `path`, plus the extra process fields in `extra`.
fn one_connect(syscall: &str, path: &str, extra: Value) -> Value {
    let mut p = json!({
        "program": "/usr/bin/docker", "processid": 7, "parentpid": 1,
        "network": {"connections": [{"syscall": syscall, "family": "AF_UNIX", "address": path, "fd": 3}]}
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    json!({"cmd": [], "exitcode": -1, "processes": [p], "trace": {"backend": "ebpf"}})
}

fn deny(m: &CompiledRego, input: &Value) -> Vec<String> {
    let mut v = m.deny(input).unwrap();
    v.sort();
    v
}

#[test]
fn connecting_to_the_engines_socket_is_denied() {
    let m = module();
    for path in [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "//var//run/./docker.sock",
        "/run/./docker.sock",
    ] {
        assert_eq!(
            deny(&m, &one_connect("connect", path, json!({}))),
            [format!("Connection to the container engine's own socket, bypassing cilock's Docker proxy: process /usr/bin/docker (PID 7) connected to {path}")],
            "{path}"
        );
    }
    // Paths the policy cannot resolve, ending in the socket's name.
    for path in [
        "docker.sock",
        "run/docker.sock",
        "/tmp/../var/run/docker.sock",
    ] {
        assert_eq!(
            deny(&m, &one_connect("connect", path, json!({}))),
            [format!("Connection to what may be the container engine's own socket (a path the policy cannot resolve): process /usr/bin/docker (PID 7) connected to {path}")],
            "{path}"
        );
    }
    // From inside a container (the socket mounted in): named with it.
    let cid = "4f1c2a9be0d3".to_string() + &"a".repeat(52);
    assert_eq!(
        deny(
            &m,
            &one_connect(
                "connect",
                "/var/run/docker.sock",
                json!({"container": cid, "mountNamespace": 4026532801u64})
            )
        ),
        [format!("Connection to the container engine's own socket, bypassing cilock's Docker proxy: process /usr/bin/docker (PID 7) in container {cid} (the path as its mount namespace sees it) connected to /var/run/docker.sock")]
    );
    assert_eq!(
        deny(
            &m,
            &one_connect(
                "connect",
                "/run/docker.sock",
                json!({"mountNamespace": 4026532900u64})
            )
        ),
        ["Connection to the container engine's own socket, bypassing cilock's Docker proxy: process /usr/bin/docker (PID 7) in mount namespace 4026532900 (the path as that namespace sees it) connected to /run/docker.sock"]
    );
}

#[test]
fn the_proxy_and_other_connections_pass() {
    let m = module();
    for (syscall, path) in [
        ("connect", "/run/cilock/docker.sock"),
        ("connect", "/run/cilock/cilock.sock"),
        ("connect", "/var/run/docker.sock.bak"),
        ("connect", "/home/u/.docker/run/dockerd.sock"),
        // Binding a socket of that name is not talking to the engine.
        ("bind", "/var/run/docker.sock"),
    ] {
        assert!(
            deny(&m, &one_connect(syscall, path, json!({}))).is_empty(),
            "{syscall} {path}"
        );
    }
    // An engine over TCP is a network connection (network-allowlist.rego).
    let tcp = json!({"processes": [{"program": "/usr/bin/docker", "processid": 7,
        "network": {"connections": [{"syscall": "connect", "family": "AF_INET", "address": "127.0.0.1", "port": 2375}]}}]});
    assert!(deny(&m, &tcp).is_empty());
    // No processes, no containers (another producer's command-run).
    assert!(deny(&m, &json!({"cmd": ["make"], "exitcode": 0})).is_empty());
}

#[test]
fn a_container_given_the_engines_socket_is_denied() {
    let m = module();
    let cid = "9e8d7c6b5a41".to_string() + &"b".repeat(52);
    let input = json!({
        "processes": [],
        "containers": [
            {"id": cid, "engine": "docker", "imageRef": "docker:cli", "attribution": "cgroup-parent",
             "mounts": [
                {"type": "bind", "source": "/var/run/docker.sock", "destination": "/var/run/docker.sock"},
                {"type": "bind", "source": "/run/", "destination": "/host-run", "readOnly": true},
                {"type": "bind", "source": "/srv/src", "destination": "/src"},
                {"type": "volume", "source": "/var/lib/docker/volumes/x/_data", "destination": "/data"}
             ]},
            {"id": "c2", "engine": "docker", "imageRef": "bb:local", "mounts": []}
        ]
    });
    assert_eq!(
        deny(&m, &input),
        [
            format!("Container {cid} (image docker:cli) was given the container engine's socket: mount of /run/ at /host-run"),
            format!("Container {cid} (image docker:cli) was given the container engine's socket: mount of /var/run/docker.sock at /var/run/docker.sock"),
        ]
    );
}
