# SBOM gate: the step's SBOM must not list a denied component and must list
# every required one.
#
# Input: the sbom attestation, whose predicate is the SBOM document itself
# (Witness's shape): a CycloneDX BOM (type https://cyclonedx.org/bom,
# `components[]` with `name` and `version`) or an SPDX document (type
# https://spdx.dev/Document, `packages[]` with `name` and `versionInfo`).
# Only the top-level component list is read (CycloneDX components nested in
# a component's `components` are not). Names are compared exactly.
#
# Edit the two sets for your build.
package cilock.sbom

import rego.v1

denied_components := {"event-stream", "flatmap-stream"}

required_components := set()

components contains {"name": c.name, "version": object.get(c, "version", "")} if {
	some c in object.get(input, "components", [])
}

components contains {"name": p.name, "version": object.get(p, "versionInfo", "")} if {
	some p in object.get(input, "packages", [])
}

names := {c.name | some c in components}

deny contains msg if {
	some c in components
	c.name in denied_components
	msg := sprintf("The SBOM lists the denied component %s %s", [c.name, c.version])
}

deny contains msg if {
	some r in required_components
	not r in names
	msg := sprintf("The SBOM does not list the required component %s", [r])
}
