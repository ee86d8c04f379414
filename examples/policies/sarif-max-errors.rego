# SARIF gate: at most `max_errors` error-level results in the step's SARIF
# report (e.g. from `ruff check --output-format sarif`, semgrep, CodeQL).
#
# Input: the sarif attestation (type
# https://witness.dev/attestations/sarif/v0.1): `report` (the SARIF log),
# `reportFileName`, `reportDigestSet`, and cilock's `summary`: `tools`,
# `results`, `levels` (`error`, `warning`, `note`, `none` counts, a
# result's level resolved as SARIF 2.1.0 says) and `ruleIds`. An
# attestation without the summary (another producer) is denied: the count
# cannot be checked.
#
# Edit `max_errors` for your build.
package cilock.sarif

import rego.v1

max_errors := 0

errors := input.summary.levels.error

deny contains msg if {
	errors > max_errors
	msg := sprintf("The SARIF report %s has %d error-level results (at most %d allowed); rules seen: %s",
		[input.reportFileName, errors, max_errors, concat(", ", input.summary.ruleIds)])
}

deny contains msg if {
	not is_number(errors)
	msg := "The SARIF attestation has no summary error count (summary.levels.error)"
}
