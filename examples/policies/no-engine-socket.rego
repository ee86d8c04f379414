# No step process talks to the container engine's own socket, and no
# container the step created gets that socket (or a directory holding it).
#
# Why: cilock's Docker API proxy (docker_proxy, /run/cilock/docker.sock) is
# what makes the containers and builds a step starts part of its evidence:
# it puts them under the step's cgroup and records them. A job that reaches
# the engine's real socket directly starts containers the daemon does not
# attribute to the step (they run under the engine's own cgroup, untraced).
# The trace still sees the job's connect() to that socket: this module turns
# it into a denial.
#
# Input: the command-run attestation of a traced step:
#   processes[].network.connections[] (AF_UNIX "address" is the path as the
#     calling process passed it: a process in a container or another mount
#     namespace (processes[].container / mountNamespace) names a path in its
#     own namespace, so a socket bind-mounted into a container is caught by
#     its path there);
#   containers[].mounts[] ("source" as the engine reports it, a host path).
# Paths are compared after removing empty and "." components; a relative
# path, or one with "..", that ends in an engine socket's file name is
# denied too (the policy cannot resolve it). A symlink to the socket under
# another name is not seen here (the kernel resolves it after the trace
# copied the path); an engine reached over TCP is a network connection,
# judged by network-allowlist.rego.
#
# Edit engine_sockets for your hosts (podman's rootful socket, containerd's).
package cilock.verify.enginesocket

import rego.v1

engine_sockets := {
	"/var/run/docker.sock",
	"/run/docker.sock",
}

# Mounting one of these into a container hands it the engine's socket.
engine_socket_dirs := {"/", "/var", "/var/run", "/run"}

# Path components without "" and ".".
parts(p) := [c | some c in split(p, "/"); c != ""; c != "."]

normal(p) := concat("", ["/", concat("/", parts(p))])

basename(p) := b if {
	ps := parts(p)
	count(ps) > 0
	b := ps[count(ps) - 1]
}

engine_names contains basename(s) if some s in engine_sockets

# An absolute path without "..": exactly one of the engine's sockets.
is_engine_socket(p) if {
	startswith(p, "/")
	not ".." in parts(p)
	normal(p) in engine_sockets
}

# A path the policy cannot resolve that ends in an engine socket's name.
may_be_engine_socket(p) if {
	not startswith(p, "/")
	basename(p) in engine_names
}

may_be_engine_socket(p) if {
	".." in parts(p)
	basename(p) in engine_names
}

# Where the process ran, for the message.
place(proc) := sprintf(" in container %s (the path as its mount namespace sees it)", [proc.container]) if {
	object.get(proc, "container", "") != ""
} else := sprintf(" in mount namespace %d (the path as that namespace sees it)", [proc.mountNamespace]) if {
	object.get(proc, "mountNamespace", 0) != 0
} else := ""

deny contains msg if {
	some proc in input.processes
	some c in proc.network.connections
	c.family == "AF_UNIX"
	c.syscall == "connect"
	is_engine_socket(c.address)
	msg := sprintf("Connection to the container engine's own socket, bypassing cilock's Docker proxy: process %s (PID %d)%s connected to %s",
		[proc.program, proc.processid, place(proc), c.address])
}

deny contains msg if {
	some proc in input.processes
	some c in proc.network.connections
	c.family == "AF_UNIX"
	c.syscall == "connect"
	may_be_engine_socket(c.address)
	msg := sprintf("Connection to what may be the container engine's own socket (a path the policy cannot resolve): process %s (PID %d)%s connected to %s",
		[proc.program, proc.processid, place(proc), c.address])
}

deny contains msg if {
	some ctr in input.containers
	some m in ctr.mounts
	src := object.get(m, "source", "")
	startswith(src, "/")
	not ".." in parts(src)
	normal(src) in (engine_sockets | engine_socket_dirs)
	msg := sprintf("Container %s (image %s) was given the container engine's socket: mount of %s at %s",
		[ctr.id, object.get(ctr, "imageRef", ""), src, object.get(m, "destination", "")])
}
