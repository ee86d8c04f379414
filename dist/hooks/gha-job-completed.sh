#!/usr/bin/env bash
# GitHub Actions self-hosted runner hook: job completed (runs even when the
# job failed or was cancelled; it does NOT run when the runner service is
# stopped mid-job or the Worker is killed: the daemon then reaps the step on
# its own after step_timeout).
#
# Ends the step begun by gha-job-started.sh and writes the signed
# attestation to $CILOCK_OUTPUT_DIR (default $RUNNER_TEMP) as
# cilock-<run id>-<attempt>-<step>.json, and names it in the job log.
# Processes of the job still running are listed in the attestation (the
# runner kills them right after this hook); CILOCK_KILL=1 kills them now.
#
# Chaining: a previous ACTIONS_RUNNER_HOOK_JOB_COMPLETED goes in
# CILOCK_PREVIOUS_JOB_COMPLETED_HOOK; it runs first (inside the traced step),
# and its exit status is this hook's unless cilock fails closed.
# The runner runs hooks with `bash -e`; errors are handled explicitly here.
set +e -uo pipefail

# shellcheck source=cilock-hook-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cilock-hook-common.sh"

prev_rc=0
cilock_chain "${CILOCK_PREVIOUS_JOB_COMPLETED_HOOK:-}" || prev_rc=$?

step="$(cilock_step_name "${GITHUB_JOB:-job}")"
outdir="${CILOCK_OUTPUT_DIR:-${RUNNER_TEMP:-/tmp}}"
out="$outdir/cilock-${GITHUB_RUN_ID:-run}-${GITHUB_RUN_ATTEMPT:-1}-$step.json"
kill_flag=()
[ "${CILOCK_KILL:-0}" = 1 ] && kill_flag=(--kill)

cilock_log "ending step $step"
# Ending hashes the workspace's products: allow more time than begin.
CILOCK_HOOK_TIMEOUT="${CILOCK_END_TIMEOUT:-${CILOCK_HOOK_TIMEOUT:-300}}" \
    cilock_run step end --step "$step" --outfile "$out" ${kill_flag[@]+"${kill_flag[@]}"}
rc=$?
if [ "$rc" -eq 0 ]; then
    printf '::notice title=cilock::signed attestation written to %s\n' "$out"
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -w "$(dirname "$GITHUB_STEP_SUMMARY")" ]; then
        printf '\n**cilock**: signed attestation for step `%s` at `%s`\n' "$step" "$out" \
            >>"$GITHUB_STEP_SUMMARY" || true
    fi
fi
CILOCK_HOOK_TIMEOUT="${CILOCK_END_TIMEOUT:-${CILOCK_HOOK_TIMEOUT:-300}}" \
    cilock_outcome "$rc" "cilock step end --step $step" || exit $?
exit "$prev_rc"
