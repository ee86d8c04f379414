# No DNS name outside an allow-list.
#
# Input: the command-run attestation of a traced step. Every DNS query any
# process sent (network.dnsLookups[]: name, type, server, transport; seen at
# the step cgroup's egress, UDP or TCP, to any server) must be an allowed
# name or below an allowed suffix. Typosquats ("githuh.com",
# "aquasecurtiy.org") and DNS tunnels (long random labels) fail.
#
# Edit allowed_names / allowed_suffixes for your build.
package cilock.verify.dns

import rego.v1

allowed_names := {
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
	"localhost",
}

allowed_suffixes := {".githubusercontent.com", ".docker.io"}

name_allowed(n) if allowed_names[lower(n)]

name_allowed(n) if {
	some s in allowed_suffixes
	endswith(lower(n), s)
}

deny contains msg if {
	some proc in input.processes
	some l in proc.network.dnsLookups
	not name_allowed(l.name)
	msg := sprintf("DNS lookup outside the allow-list: process %s (PID %d) resolved %s (%s) via %s port %d",
		[proc.program, proc.processid, l.name, object.get(l, "type", "?"), l.serverAddress, l.serverPort])
}
