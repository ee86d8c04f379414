# The command succeeded, by what the tracer observed, not by what a client
# says.
#
# Input: the command-run attestation. `exitcode` is the exit status of the
# step's root process as the tracer saw it (128+signal for a signal); it is
# -1 when the tracer did not see it exit (a `step begin/end` step: the
# job's shell is still running at `step end`), and `trace.observed` then
# does not list it. `claimed.exitcode` is what a client reported
# (`cilock step end --exitcode`, `cilock run` through the daemon) and is
# never trusted here: a claimed 0 does not make a failed command pass.
#
# cilock's attestations list the fields the tracer observed in
# `trace.observed`; an attestation without a `trace` (another producer) is
# judged on `exitcode` alone.
package cilock.verify.result

import rego.v1

trace := object.get(input, "trace", null)

exit_unobserved if {
	trace != null
	not "exitcode" in object.get(trace, "observed", [])
}

claimed := object.get(object.get(input, "claimed", {}), "exitcode", "none")

deny contains msg if {
	exit_unobserved
	msg := sprintf("The command's exit status was not observed (%s); the claimed exit code (%v) does not count",
		[object.get(object.get(trace, "unobserved", {}), "exitcode", "not listed in trace.observed"), claimed])
}

deny contains msg if {
	not exit_unobserved
	input.exitcode != 0
	msg := sprintf("The command failed: its root process exited with status %d (claimed: %v)",
		[input.exitcode, claimed])
}
