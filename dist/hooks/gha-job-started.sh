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
cilock_outcome $? "cilock step begin --step $step" || exit $?

cilock_chain "${CILOCK_PREVIOUS_JOB_STARTED_HOOK:-}"
exit $?
