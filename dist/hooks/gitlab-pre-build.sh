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
# Docker: a program cannot change the environment of the shell that runs it,
# so this file cannot set the job's DOCKER_HOST. To send the job's docker CLI
# through the daemon's Docker API proxy, source gitlab-pre-build-env.sh
# instead of running this file (it runs this file, then exports DOCKER_HOST
# in the job's shell):
#   pre_build_script = ". /usr/libexec/cilock/gitlab-pre-build-env.sh"
# With CILOCK_DOCKER_HOST_FILE set, this file writes the DOCKER_HOST value
# there once the step has begun and the proxy is usable (see
# cilock_docker_host in cilock-hook-common.sh); nothing otherwise.
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
begin_rc=$?
cilock_outcome "$begin_rc" "cilock step begin --step $step" || exit $?

if [ "$begin_rc" -eq 0 ] && [ -n "${CILOCK_DOCKER_HOST_FILE:-}" ] &&
    docker_host="$(cilock_docker_host)"; then
    printf '%s\n' "$docker_host" >"$CILOCK_DOCKER_HOST_FILE" ||
        cilock_warn "could not write $CILOCK_DOCKER_HOST_FILE: DOCKER_HOST left alone"
fi

cilock_chain "${CILOCK_PREVIOUS_PRE_BUILD_HOOK:-}"
exit $?
