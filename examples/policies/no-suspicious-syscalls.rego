# No memfd_create, ptrace, mount (or the other process-injection, fileless
# execution, kernel and namespace escapes) in build steps.
#
# Input: the command-run attestation of a traced step: syscallEvents[] of
# every process (recorded at syscall entry, so denied attempts count too).
# `detail` is free text for people; the rule matches on `syscall` only.
package cilock.verify.syscalls

import rego.v1

forbidden := {
	"memfd_create": "fileless execution",
	"ptrace": "process injection or debugging",
	"process_vm_readv": "reading another process's memory",
	"process_vm_writev": "writing another process's memory",
	"mount": "mounting a filesystem",
	"fsopen": "mounting a filesystem",
	"fsmount": "mounting a filesystem",
	"move_mount": "mounting a filesystem",
	"open_tree": "mounting a filesystem",
	"init_module": "loading a kernel module",
	"finit_module": "loading a kernel module",
	"bpf": "loading eBPF",
	"cgroup_leave": "escaping the traced step",
}

deny contains msg if {
	some proc in input.processes
	some e in proc.syscallEvents
	why := forbidden[e.syscall]
	msg := sprintf("Forbidden syscall in a build step (%s): process %s (PID %d) called %s: %s",
		[why, proc.program, proc.processid, e.syscall, object.get(e, "detail", "")])
}

# Signals or ptrace aimed at the cilock daemon: tampering with the observer.
deny contains msg if {
	some proc in input.processes
	some e in proc.syscallEvents
	e.syscall in {"kill", "tkill", "tgkill", "pidfd_send_signal"}
	contains(object.get(e, "detail", ""), "cilock daemon")
	msg := sprintf("Signal aimed at the cilock daemon: process %s (PID %d) called %s: %s",
		[proc.program, proc.processid, e.syscall, e.detail])
}
