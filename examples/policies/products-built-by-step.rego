# Every product was written by a process of the step.
#
# Input: the product attestation (path → {mime_type, digest, writtenByStep}).
# cilock marks each product of a traced step with `writtenByStep`: true
# when the file hashed is one a step process opened for writing (a file
# written under a temporary name and renamed into place counts), false when
# it appeared or changed in the workdir without any step process writing it
# (a process outside the step put it there). A product without the mark
# (no trace, another producer) is denied too: it is not shown to be built
# by the step.
package cilock.verify.products

import rego.v1

deny contains msg if {
	some path, p in input
	object.get(p, "writtenByStep", false) != true
	msg := sprintf("Product %s was not written by any process of the step (writtenByStep: %v): it appeared in the workdir from outside the step",
		[path, object.get(p, "writtenByStep", "absent")])
}
