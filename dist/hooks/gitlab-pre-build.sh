#!/usr/bin/env bash
# GitLab Runner (shell executor) hook: start tracing the job's script.
#
# /etc/gitlab-runner/config.toml, in each [[runners]] using the shell executor:
#   pre_build_script = "/usr/libexec/cilock/gitlab-pre-build.sh"
# (or RUNNER_PRE_BUILD_SCRIPT). The runner user (gitlab-runner) must be in
# the `cilock` group. pre_build_script runs in the same shell as
# before_script and script, so $PPID is that shell: moving it into the step's
# cgroup traces everything the job's script runs afterwards.
#
# Ending the step: GitLab has no runner-level hook that always runs at job
# end (post_build_script is skipped when the script fails, after_script runs
# in another shell). See README.md here: either add
#   post_build_script = "/usr/libexec/cilock/gitlab-post-build.sh"
# for successful jobs and rely on the daemon to finalize failed ones when the
# stage's cgroup empties (or after step_timeout), or use a custom executor
# whose cleanup_exec runs `cilock step end`.
#
# Chaining: a previous pre_build_script file goes in
# CILOCK_PREVIOUS_PRE_BUILD_HOOK (run after the step has begun; its failure
# fails the job as before). Settings: see cilock-hook-common.sh;
# CILOCK_ATTESTATIONS defaults to "environment,git,gitlab".
# The runner runs hooks with `bash -e`; errors are handled explicitly here.
set +e -uo pipefail

# shellcheck source=cilock-hook-common.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cilock-hook-common.sh"

step="$(cilock_step_name "${CI_JOB_NAME:-job}")"
workdir="${CI_PROJECT_DIR:-$PWD}"
cilock_log "beginning step $step (job shell pid $PPID, workdir $workdir)"
cilock_run step begin \
    --step "$step" \
    --pid "$PPID" \
    --workdir "$workdir" \
    --attestations "${CILOCK_ATTESTATIONS:-environment,git,gitlab}"
cilock_outcome $? "cilock step begin --step $step" || exit $?

cilock_chain "${CILOCK_PREVIOUS_PRE_BUILD_HOOK:-}"
exit $?
