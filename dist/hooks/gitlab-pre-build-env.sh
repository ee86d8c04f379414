# shellcheck shell=sh
# GitLab Runner (shell executor): begin the step AND point the job's docker
# CLI at cilock's Docker API proxy. This file is SOURCED into the job's shell
# (a program cannot change its caller's environment; pre_build_script runs
# in the same shell as before_script and script, so what is exported here is
# theirs):
#
#   pre_build_script = ". /usr/libexec/cilock/gitlab-pre-build-env.sh"
#
# It runs gitlab-pre-build.sh as a child of the job's shell (so that hook's
# $PPID is the job's shell, as when it is the pre_build_script itself), then
# exports DOCKER_HOST=unix://<proxy> when the step began and the proxy
# (CILOCK_DOCKER_PROXY, default /run/cilock/docker.sock) exists and this user
# may use it. Otherwise DOCKER_HOST is left as it was. A failure of the hook
# is this file's status (so CILOCK_FAIL_CLOSED=1 still fails the job).
# CILOCK_HOOK_DIR: where the hooks are [/usr/libexec/cilock].
#
# Plain POSIX sh, no `set`, no `exit`: it runs in the job's own shell. Its
# variables are unset again; only DOCKER_HOST is left.
__cilock_dir="${CILOCK_HOOK_DIR:-/usr/libexec/cilock}"
__cilock_file="$(mktemp "${TMPDIR:-/tmp}/cilock-docker-host.XXXXXX" 2>/dev/null)" || __cilock_file=""
__cilock_rc=0
CILOCK_DOCKER_HOST_FILE="$__cilock_file" "$__cilock_dir/gitlab-pre-build.sh" || __cilock_rc=$?
if [ -n "$__cilock_file" ]; then
    if [ -s "$__cilock_file" ]; then
        IFS= read -r __cilock_dh <"$__cilock_file" || true
        case "$__cilock_dh" in
            unix:///*)
                DOCKER_HOST="$__cilock_dh"
                export DOCKER_HOST
                printf 'cilock: DOCKER_HOST=%s for the job (through cilock'"'"'s Docker proxy)\n' "$DOCKER_HOST" >&2
                ;;
        esac
    fi
    rm -f "$__cilock_file"
fi
unset __cilock_dir __cilock_file __cilock_dh
# Expanded before it runs: unsets the last variable, then returns its value.
eval "unset __cilock_rc; return $__cilock_rc"
