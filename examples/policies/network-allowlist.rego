# No connection outside an allow-list of hosts.
#
# Input: the command-run attestation of a traced step. A TCP/UDP connection
# (connect, or sendto with a destination) of any process is allowed when
#   - its TLS server name (network.connections[].hostname, from the
#     ClientHello the process sent on that connection) is an allowed host, or
#   - it carries no server name and its address is loopback, an allowed
#     address, or an address an allowed host resolved to in this step
#     (network.dnsLookups[].answers, "A 1.2.3.4" / "AAAA 2001:db8::1").
# DNS traffic (port 53) is judged by dns-allowlist.rego; Unix sockets and
# binds are not connections out of the machine.
#
# Edit allowed_hosts / allowed_suffixes / allowed_addresses for your build.
package cilock.verify.network

import rego.v1

allowed_hosts := {
	"github.com",
	"api.github.com",
	"codeload.github.com",
	"objects.githubusercontent.com",
	"registry.npmjs.org",
	"pypi.org",
	"files.pythonhosted.org",
	"crates.io",
	"index.crates.io",
	"static.crates.io",
	"proxy.golang.org",
}

# Any name below these (e.g. "pkg-containers.githubusercontent.com").
allowed_suffixes := {".githubusercontent.com", ".docker.io"}

allowed_addresses := {"127.0.0.53"}

host_allowed(h) if allowed_hosts[h]

host_allowed(h) if {
	some s in allowed_suffixes
	endswith(h, s)
}

loopback(a) if startswith(a, "127.")

loopback(a) if a == "::1"

resolved_allowed contains addr if {
	some proc in input.processes
	some l in proc.network.dnsLookups
	host_allowed(l.name)
	some ans in l.answers
	parts := split(ans, " ")
	parts[0] in {"A", "AAAA"}
	addr := parts[1]
}

addr_allowed(a) if loopback(a)

addr_allowed(a) if allowed_addresses[a]

addr_allowed(a) if resolved_allowed[a]

conn_allowed(c) if {
	c.hostname != ""
	host_allowed(c.hostname)
}

conn_allowed(c) if {
	object.get(c, "hostname", "") == ""
	addr_allowed(c.address)
}

deny contains msg if {
	some proc in input.processes
	some c in proc.network.connections
	c.syscall in {"connect", "sendto"}
	c.family in {"AF_INET", "AF_INET6"}
	object.get(c, "port", 0) != 53
	not conn_allowed(c)
	msg := sprintf("Connection outside the allow-list: process %s (PID %d) %s %s port %d (TLS server name %q)",
		[proc.program, proc.processid, c.syscall, c.address, object.get(c, "port", 0), object.get(c, "hostname", "")])
}
