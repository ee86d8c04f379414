# policy-source-restrict.rego (from the product description, unchanged):
# only actions from trusted sources, pinned to a commit SHA.
# Input: the github-action attestation (actionref, refpinned).
package cilock.verify

deny[msg] {
ref := input.actionref
not startswith(ref, "actions/")
not startswith(ref, "chainguard-dev/")
msg := sprintf("Action from untrusted source: %s", [ref])
}

deny[msg] {
not input.refpinned
msg := sprintf("Action ref not pinned to SHA: %s", [input.actionref])
}
