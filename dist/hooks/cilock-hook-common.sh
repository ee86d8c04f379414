# shellcheck shell=bash
# Shared by the cilock runner hooks (sourced, not run). Installed next to
# them in /usr/libexec/cilock/.
#
# Settings (environment; put them in the runner's .env file, its systemd
# unit, or GitLab's [[runners]] environment):
#   CILOCK_BIN            cilock binary            [cilock on PATH, else /usr/local/bin/cilock]
#   CILOCK_HOOK_TIMEOUT   seconds per cilock call  [30 for begin, 300 for end]
#   CILOCK_END_TIMEOUT    seconds for `step end` (hashes products) [CILOCK_HOOK_TIMEOUT or 300]
#   CILOCK_KILL           1: `step end --kill` (GitHub completed hook)
#   CILOCK_FAIL_CLOSED    1: a cilock failure fails the job; default fail-open
#                         (the job runs unobserved and a warning is printed)
#   CILOCK_STEP           step (attestation collection) name [the CI job name]
#   CILOCK_ATTESTATIONS   extra attestors, comma-separated [per hook]
#   CILOCK_OUTPUT_DIR     where `step end` writes the envelope [per hook]
#   CILOCK_SOCKET         daemon socket [/run/cilock/cilock.sock]
#   CILOCK_DOCKER_PROXY   the daemon's Docker API proxy socket (its
#                         docker_proxy key) [/run/cilock/docker.sock]; once
#                         the step has begun, the job's DOCKER_HOST points at
#                         it when this user can use it. "": leave DOCKER_HOST
#                         alone (e.g. for `container:` jobs, see README.md)

cilock_log() {
    printf 'cilock: %s\n' "$*" >&2
}

# Prints a warning in the CI system's own syntax.
cilock_warn() {
    if [ -n "${GITHUB_ACTIONS:-}" ]; then
        printf '::warning title=cilock::%s\n' "$*"
    else
        printf 'cilock: warning: %s\n' "$*" >&2
    fi
}

cilock_bin() {
    if [ -n "${CILOCK_BIN:-}" ]; then
        printf '%s' "$CILOCK_BIN"
    elif command -v cilock >/dev/null 2>&1; then
        command -v cilock
    else
        printf '%s' /usr/local/bin/cilock
    fi
}

# A step name the daemon accepts: letters, digits, '.', '_' and '-'.
cilock_step_name() {
    local raw="${CILOCK_STEP:-${1:-job}}"
    raw="$(printf '%s' "$raw" | tr -c 'A-Za-z0-9._-' '-' | sed -e 's/--*/-/g' -e 's/^-//' -e 's/-$//')"
    printf '%s' "${raw:-job}"
}

# Runs cilock with a bounded runtime: TERM after CILOCK_HOOK_TIMEOUT seconds,
# KILL 5 s later.
cilock_run() {
    local bin t
    bin="$(cilock_bin)"
    t="${CILOCK_HOOK_TIMEOUT:-30}"
    case "$t" in '' | *[!0-9]*) t=30 ;; esac
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=5 "$t" "$bin" "$@"
    else
        "$bin" "$@"
    fi
}

# Maps a cilock exit status to the hook's: 0 when failing open.
cilock_outcome() {
    local rc="$1" what="$2"
    [ "$rc" -eq 0 ] && return 0
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        what="$what (timed out after ${CILOCK_HOOK_TIMEOUT:-30} s)"
    fi
    if [ "${CILOCK_FAIL_CLOSED:-0}" = 1 ]; then
        cilock_log "$what failed (exit $rc); failing the job (CILOCK_FAIL_CLOSED=1)"
        return "$rc"
    fi
    cilock_warn "$what failed (exit $rc); this job is not being attested (fail-open)"
    return 0
}

# Runs a previously configured hook (chaining): a .sh file with bash -e, a
# .ps1 file with pwsh, or a directory (ARC style) whose *.sh files run in
# order. Returns the previous hook's status, so its semantics are kept.
cilock_chain() {
    local prev="$1" self f rc
    [ -n "$prev" ] || return 0
    self="$(readlink -f "${BASH_SOURCE[1]:-$0}" 2>/dev/null || true)"
    if [ "$(readlink -f "$prev" 2>/dev/null || true)" = "$self" ]; then
        cilock_log "previous hook $prev is this script; not chaining"
        return 0
    fi
    if [ -d "$prev" ]; then
        for f in "$prev"/*.sh; do
            [ -e "$f" ] || continue
            cilock_log "running previous hook $f"
            bash -e "$f" || return $?
        done
        return 0
    fi
    if [ ! -r "$prev" ]; then
        cilock_log "previous hook $prev does not exist or is unreadable"
        return 1
    fi
    cilock_log "running previous hook $prev"
    case "$prev" in
        *.ps1)
            if command -v pwsh >/dev/null 2>&1; then
                pwsh -command ". '$prev'"
            else
                powershell -command ". '$prev'"
            fi
            rc=$?
            ;;
        *) bash -e "$prev"; rc=$? ;;
    esac
    return "$rc"
}

# The DOCKER_HOST value that sends the job's docker CLI through the daemon's
# Docker API proxy (so the containers and builds it starts are the step's
# evidence), printed on stdout; status 1 (and a line on stderr saying why,
# unless the proxy is simply absent) when the job should keep its own:
#   - CILOCK_DOCKER_PROXY is "" (disabled here) or not an absolute path;
#   - no socket there (the daemon runs without the proxy, or is down);
#   - this user may not connect to it (connecting to a Unix socket needs
#     write permission on it; the proxy's is 0660, group cilock);
#   - DOCKER_HOST already names another engine than the default socket
#     (the proxy forwards to the daemon's docker_socket, not to that one).
# Call it only after `step begin` succeeded: the daemon answered then, so a
# socket left behind by a daemon that is gone is not mistaken for its proxy.
cilock_docker_host() {
    local sock="${CILOCK_DOCKER_PROXY-/run/cilock/docker.sock}"
    [ -n "$sock" ] || return 1
    case "$sock" in
        /*) ;;
        *)
            cilock_log "CILOCK_DOCKER_PROXY=$sock is not an absolute path; DOCKER_HOST left alone"
            return 1
            ;;
    esac
    [ -S "$sock" ] || return 1
    if [ ! -r "$sock" ] || [ ! -w "$sock" ]; then
        cilock_log "this user ($(id -un 2>/dev/null || id -u)) may not use the Docker proxy $sock (not in its group?); DOCKER_HOST left alone: containers this job starts are not the step's evidence"
        return 1
    fi
    case "${DOCKER_HOST:-}" in
        "" | unix:///var/run/docker.sock | unix:///run/docker.sock | "unix://$sock") ;;
        *)
            cilock_log "DOCKER_HOST is already $DOCKER_HOST (not the default engine); left alone: containers this job starts there are not the step's evidence"
            return 1
            ;;
    esac
    printf 'unix://%s' "$sock"
}
