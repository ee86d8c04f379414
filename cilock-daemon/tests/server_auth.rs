//! Socket permissions and SO_PEERCRED authentication of the daemon's server.
//!
//! These tests run as root (they change uids with `setpriv` and create a
//! group with `groupadd`); they are skipped with a message otherwise.
//! Requests come from this test binary re-run as another user (see
//! `crate::server_support::run_as`); the service is the in-test stand-in.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::server_support::*;
use cilock_api::{ErrorKind, Reply};
use cilock_daemon::server::{Access, Server, ServerConfig};
use cilock_testkit::users::Group;

/// A group name that does not exist: the socket becomes root-only.
const NO_SUCH_GROUP: &str = "cilock-test-no-such-group";
/// A gid with no /etc/group entry, configured numerically.
const TEST_GID: u32 = 48_213;
const NOBODY: &str = "--reuid=65534";
const NOBODY_GROUP: &str = "--regid=65534";

/// Lets any user reach the socket (file and directory), so the daemon's own
/// check is what decides.
fn open_up(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn root_peer_is_served() {
    cilock_testkit::users::require_root();
    let srv = TestServer::start(NO_SUCH_GROUP, |_| {});
    status_ok(&srv.path);
    // Through setpriv too, as root with no groups.
    match run_as(&["--reuid=0", "--regid=0", "--clear-groups"], &srv.path) {
        PeerOutcome::Ok(Reply::Status(_)) => {}
        other => panic!("root was not served: {other:?}"),
    }
}

#[test]
fn root_only_socket_when_group_is_missing() {
    cilock_testkit::users::require_root();
    let (dir, path) = temp_socket_dir();
    let server = Server::bind(ServerConfig::new(&path, NO_SUCH_GROUP)).unwrap();
    assert_eq!(server.access(), &Access::RootOnly);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!(meta.uid(), 0);
    let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o7777, 0o755, "created parent dir mode");
    let srv = TestServer::run(server, dir, path.clone());

    // The file mode keeps other users out entirely.
    match run_as(&[NOBODY, NOBODY_GROUP, "--clear-groups"], &path) {
        PeerOutcome::Connect(msg) => assert!(msg.contains("ermission denied"), "{msg}"),
        other => panic!("expected permission denied, got {other:?}"),
    }
    // With the file opened up, the daemon itself still refuses non-root.
    open_up(&path);
    match run_as(&[NOBODY, NOBODY_GROUP, "--clear-groups"], &path) {
        PeerOutcome::Daemon(e) => assert_eq!(e.kind, ErrorKind::Forbidden, "{e}"),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    status_ok(&srv.path);
}

#[test]
fn socket_mode_and_group_follow_an_existing_group() {
    cilock_testkit::users::require_root();
    let group = Group::create_system("clksock");
    let (dir, path) = temp_socket_dir();
    let server = Server::bind(ServerConfig::new(&path, &group.name)).unwrap();
    assert_eq!(
        server.access(),
        &Access::Group {
            name: group.name.clone(),
            gid: group.gid
        }
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "socket mode");
    assert_eq!(meta.gid(), group.gid, "socket group");
    assert_eq!(meta.uid(), 0);
    let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o7777, 0o750, "created parent dir mode");
    assert_eq!(parent.gid(), group.gid, "created parent dir group");

    let srv = TestServer::run(server, dir, path.clone());
    // A member through a supplementary group (resolved by name) is served.
    let groups = format!("--groups={}", group.gid);
    match run_as(&[NOBODY, NOBODY_GROUP, &groups], &path) {
        PeerOutcome::Ok(Reply::Status(_)) => {}
        other => panic!("group member was not served: {other:?}"),
    }
    drop(srv);
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[test]
fn other_uid_not_in_group_is_forbidden() {
    cilock_testkit::users::require_root();
    let srv = TestServer::start(&TEST_GID.to_string(), |_| {});
    open_up(&srv.path);
    match run_as(&[NOBODY, NOBODY_GROUP, "--clear-groups"], &srv.path) {
        PeerOutcome::Daemon(e) => {
            assert_eq!(e.kind, ErrorKind::Forbidden);
            assert!(e.message.contains("65534"), "{}", e.message);
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    // The daemon keeps serving.
    status_ok(&srv.path);
}

#[test]
fn other_uid_without_group_cannot_open_the_socket() {
    cilock_testkit::users::require_root();
    let srv = TestServer::start(&TEST_GID.to_string(), |_| {});
    match run_as(&[NOBODY, NOBODY_GROUP, "--clear-groups"], &srv.path) {
        PeerOutcome::Connect(msg) => assert!(msg.contains("ermission denied"), "{msg}"),
        other => panic!("expected permission denied, got {other:?}"),
    }
}

#[test]
fn primary_group_member_is_served() {
    cilock_testkit::users::require_root();
    let srv = TestServer::start(&TEST_GID.to_string(), |_| {});
    let regid = format!("--regid={TEST_GID}");
    match run_as(&[NOBODY, &regid, "--clear-groups"], &srv.path) {
        PeerOutcome::Ok(Reply::Status(_)) => {}
        other => panic!("primary-group member was not served: {other:?}"),
    }
}

#[test]
fn supplementary_group_member_is_served() {
    cilock_testkit::users::require_root();
    let srv = TestServer::start(&TEST_GID.to_string(), |_| {});
    let groups = format!("--groups=100,{TEST_GID}");
    match run_as(&[NOBODY, NOBODY_GROUP, &groups], &srv.path) {
        PeerOutcome::Ok(Reply::Status(_)) => {}
        other => panic!("supplementary-group member was not served: {other:?}"),
    }
    // And a non-member with other supplementary groups is not.
    open_up(&srv.path);
    match run_as(&[NOBODY, NOBODY_GROUP, "--groups=100,101"], &srv.path) {
        PeerOutcome::Daemon(e) => assert_eq!(e.kind, ErrorKind::Forbidden),
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[test]
fn proc_status_groups_of_a_peer() {
    // The /proc fallback reads the same groups the kernel reports.
    let mine = cilock_daemon::server::auth::proc_groups(std::process::id()).unwrap();
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut buf = vec![0 as libc::gid_t; n.max(0) as usize];
    let n = unsafe { libc::getgroups(buf.len() as i32, buf.as_mut_ptr()) };
    buf.truncate(n.max(0) as usize);
    let mut a = mine.clone();
    a.sort();
    buf.sort();
    assert_eq!(a, buf);
}
