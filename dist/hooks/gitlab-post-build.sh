#!/usr/bin/env bash
# GitLab Runner (shell executor) hook: end the step begun by
# gitlab-pre-build.sh and write its signed attestation.
#
#   post_build_script = "/usr/libexec/cilock/gitlab-post-build.sh"
#
# GitLab skips post_build_script when the job's script fails, so this only
# covers successful jobs; see README.md for failed ones. The envelope goes
# to $CILOCK_OUTPUT_DIR (default $CI_PROJECT_DIR/.cilock, so it can be kept
# with `artifacts: paths: [.cilock/]`) as cilock-<job id>-<step>.json.
# The runner runs hooks with `bash -e`; errors are handled explicitly here.
set +e -uo pipefail

# shellcheck source=cilock-hook-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cilock-hook-common.sh"

step="$(cilock_step_name "${CI_JOB_NAME:-job}")"
outdir="${CILOCK_OUTPUT_DIR:-${CI_PROJECT_DIR:-$PWD}/.cilock}"
mkdir -p "$outdir" 2>/dev/null || true
out="$outdir/cilock-${CI_JOB_ID:-job}-$step.json"
cilock_log "ending step $step"
CILOCK_HOOK_TIMEOUT="${CILOCK_END_TIMEOUT:-${CILOCK_HOOK_TIMEOUT:-300}}" \
    cilock_run step end --step "$step" --outfile "$out"
rc=$?
[ "$rc" -eq 0 ] && cilock_log "signed attestation written to $out"
CILOCK_HOOK_TIMEOUT="${CILOCK_END_TIMEOUT:-${CILOCK_HOOK_TIMEOUT:-300}}" \
    cilock_outcome "$rc" "cilock step end --step $step"
exit $?
