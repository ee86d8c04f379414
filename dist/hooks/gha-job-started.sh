#!/usr/bin/env bash
# GitHub Actions self-hosted runner hook: job started.
#
# Configure the runner (then restart it; .env is read once at start):
#   echo ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/libexec/cilock/gha-job-started.sh >> <runner>/.env
#   echo ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/usr/libexec/cilock/gha-job-completed.sh >> <runner>/.env
# The runner user must be in the `cilock` group.
#
# The runner runs this file as `bash -e <path>` from Runner.Worker, so $PPID
# is the Worker: `cilock step begin --pid $PPID` moves the Worker into the
# step's cgroup and every later step of the job (and the completed hook) is
# traced.
#
# Chaining: if ACTIONS_RUNNER_HOOK_JOB_STARTED was already set to another
# hook (e.g. ARC's /etc/arc/hooks/job-started.sh, or a .d directory), put
# that value in CILOCK_PREVIOUS_JOB_STARTED_HOOK; it runs after the step has
# begun, and its failure fails the job as before.
#
# Docker: once the step has begun, when the daemon's Docker API proxy
# (CILOCK_DOCKER_PROXY, default /run/cilock/docker.sock) exists and this user
# may use it, DOCKER_HOST=unix://<proxy> is written to $GITHUB_ENV, so the
# docker CLI of every later step goes through the proxy and the containers
# and builds it starts are part of the step's evidence. The runner's own
# docker calls (container: jobs, services, container actions) do not read
# $GITHUB_ENV and are not covered; see README.md.
#
# Other settings: see cilock-hook-common.sh (CILOCK_FAIL_CLOSED,
# CILOCK_HOOK_TIMEOUT, CILOCK_STEP, CILOCK_BIN). CILOCK_ATTESTATIONS defaults
# to "environment,git,github".
# The runner runs hooks with `bash -e`; errors are handled explicitly here.
set +e -uo pipefail

# shellcheck source=cilock-hook-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cilock-hook-common.sh"

step="$(cilock_step_name "${GITHUB_JOB:-job}")"
workdir="${GITHUB_WORKSPACE:-$PWD}"
worker="$PPID"
if [ -r "/proc/$worker/comm" ] && [ "$(cat "/proc/$worker/comm")" != Runner.Worker ]; then
    cilock_log "note: parent process $worker is $(cat "/proc/$worker/comm"), not Runner.Worker"
fi

cilock_log "beginning step $step (Worker pid $worker, workdir $workdir)"
cilock_run step begin \
    --step "$step" \
    --pid "$worker" \
    --workdir "$workdir" \
    --attestations "${CILOCK_ATTESTATIONS:-environment,git,github}"
begin_rc=$?
cilock_outcome "$begin_rc" "cilock step begin --step $step" || exit $?

if [ "$begin_rc" -eq 0 ] && docker_host="$(cilock_docker_host)"; then
    if [ -n "${GITHUB_ENV:-}" ] && printf 'DOCKER_HOST=%s\n' "$docker_host" >>"$GITHUB_ENV"; then
        cilock_log "DOCKER_HOST=$docker_host for the job's steps (through cilock's Docker proxy)"
    else
        cilock_warn "could not write DOCKER_HOST to \$GITHUB_ENV (${GITHUB_ENV:-unset}): containers this job starts are not the step's evidence"
    fi
fi

cilock_chain "${CILOCK_PREVIOUS_JOB_STARTED_HOOK:-}"
exit $?
