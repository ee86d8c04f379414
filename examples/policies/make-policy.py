#!/usr/bin/env python3
"""Builds a Witness policy (JSON, unsigned) for one traced build step from
the Rego modules in this directory, with the given functionary key.

  make-policy.py --step build --pubkey signer.pem.pub -o policy.json
  cilock sign -k policy-key.pem -f policy.json -o policy.signed.json
  cilock verify -p policy.signed.json -k policy-key.pem.pub -a build.att.json -f artifact

The key id is the Witness one: sha256 of the public key PEM.
"""
import argparse
import base64
import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
COMMAND_RUN = "https://witness.dev/attestations/command-run/v0.1"
PRODUCT = "https://witness.dev/attestations/product/v0.1"
SBOM_TYPES = {"cyclonedx": "https://cyclonedx.org/bom", "spdx": "https://spdx.dev/Document"}
SARIF = "https://witness.dev/attestations/sarif/v0.1"
MODULES = [
    "trace-behavioral.rego",
    "network-allowlist.rego",
    "dns-allowlist.rego",
    "no-suspicious-syscalls.rego",
]


def module(name):
    with open(os.path.join(HERE, name), "rb") as f:
        return {"name": name[: -len(".rego")], "module": base64.b64encode(f.read()).decode()}


def policy(step, pem, expires, require_success=False, built_products=False, no_engine_socket=False,
           sbom_gate=None, sarif_gate=False):
    keyid = hashlib.sha256(pem).hexdigest()
    modules = MODULES + (["command-succeeded.rego"] if require_success else [])
    modules += ["no-engine-socket.rego"] if no_engine_socket else []
    attestations = [{"type": COMMAND_RUN, "regopolicies": [module(m) for m in modules]}]
    if built_products:
        attestations.append({"type": PRODUCT, "regopolicies": [module("products-built-by-step.rego")]})
    if sbom_gate:
        attestations.append({"type": SBOM_TYPES[sbom_gate], "regopolicies": [module("sbom-components.rego")]})
    if sarif_gate:
        attestations.append({"type": SARIF, "regopolicies": [module("sarif-max-errors.rego")]})
    return {
        "expires": expires,
        "steps": {
            step: {
                "name": step,
                "attestations": attestations,
                "functionaries": [{"type": "publickey", "publickeyid": keyid}],
            }
        },
        "publickeys": {keyid: {"keyid": keyid, "key": base64.b64encode(pem).decode()}},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", default="build")
    ap.add_argument("--pubkey", required=True, help="the public key that signs the step's attestations")
    ap.add_argument("--expires", default="2030-01-01T00:00:00Z")
    ap.add_argument("--require-success", action="store_true",
                    help="also require the observed exit status 0 (command-succeeded.rego)")
    ap.add_argument("--built-products", action="store_true",
                    help="also require every product to be written by the step (products-built-by-step.rego)")
    ap.add_argument("--no-engine-socket", action="store_true",
                    help="also deny reaching the container engine's own socket, bypassing cilock's Docker proxy (no-engine-socket.rego)")
    ap.add_argument("--sbom-gate", choices=sorted(SBOM_TYPES),
                    help="also require the step's SBOM (CycloneDX or SPDX) and gate on its components (sbom-components.rego)")
    ap.add_argument("--sarif-gate", action="store_true",
                    help="also require the step's SARIF report and gate on its error count (sarif-max-errors.rego)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    with open(a.pubkey, "rb") as f:
        pem = f.read()
    with open(a.out, "w") as f:
        json.dump(policy(a.step, pem, a.expires, a.require_success, a.built_products, a.no_engine_socket,
                         a.sbom_gate, a.sarif_gate), f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
