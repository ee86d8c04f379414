//! The link attestor: the step as an in-toto link predicate v0.3
//! (`https://in-toto.io/attestation/link/v0.3`), as go-witness's
//! `attestation/link/link.go` builds it from the other attestations.
//!
//! ```text
//! {
//!   "name": "build",                      // the step (absent if unknown)
//!   "command": ["make", "all"],           // command-run's observed cmd
//!   "materials": [{"name": "src/main.c", "digest": {"sha256": "…"}}, …],
//!   "byproducts": {"return-value": 0,     // the observed exit code
//!                  "stdoutCaptured": true, "stderrCaptured": false},
//!   "environment": {"PATH": "/usr/bin", …}  // the environment attestor's
//! }                                          // variables, when it ran
//! ```
//!
//! The predicate has no products field: as in go-witness, the products are
//! the link's subjects (`file:<path>`, the product digests), which a
//! statement carries. Materials are sorted by path. The fields are the
//! protobuf JSON of `in_toto_attestation.predicates.link.v0.Link`
//! (`byproducts` and `environment` are `Struct`s). Differences from
//! go-witness: `byproducts` is filled (go-witness leaves it empty):
//! `return-value` (in-toto's run convention) only when the tracer saw the
//! exit, `stdoutCaptured`/`stderrCaptured` (cilock) whether output the
//! tracer observed was recorded in command-run — the output itself stays
//! there, not copied; a command the tracer did not observe (only a client
//! claimed it) is not the link's `command`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::command_run::EXITCODE_UNKNOWN;
use super::lifecycle::AttestorOptions;
use super::{product_files, AttestError, AttestationContext, Attestor, Stage};
use crate::digest::DigestSet;

/// Attestor name.
pub const NAME: &str = "link";
/// The predicate type.
pub const TYPE: &str = "https://in-toto.io/attestation/link/v0.3";

/// The link attestor.
#[derive(Debug)]
pub struct LinkAttestor {
    subjects: BTreeMap<String, DigestSet>,
}

impl LinkAttestor {
    /// Built from the options of the step.
    pub fn new(_opts: &AttestorOptions) -> Result<Self, AttestError> {
        Ok(LinkAttestor {
            subjects: BTreeMap::new(),
        })
    }
}

impl Attestor for LinkAttestor {
    fn name(&self) -> &'static str {
        NAME
    }
    fn type_uri(&self) -> String {
        TYPE.to_string()
    }
    fn stage(&self) -> Stage {
        Stage::PostProduct
    }
    fn attest(&mut self, ctx: &AttestationContext) -> Result<Value, AttestError> {
        let Some(run) = ctx.completed_json(super::command_run::NAME) else {
            return Err(AttestError::Absent(
                "link: no command-run attestation to describe".into(),
            ));
        };
        let mut link = Map::new();
        if !ctx.step.is_empty() {
            link.insert("name".into(), json!(ctx.step));
        }
        let cmd: Vec<&str> = run
            .get("cmd")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !cmd.is_empty() {
            link.insert("command".into(), json!(cmd));
        }
        let materials: BTreeMap<String, DigestSet> = match ctx.completed_json(super::material::NAME)
        {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                AttestError::Invalid(format!("link: cannot read the materials: {e}"))
            })?,
            None => BTreeMap::new(),
        };
        if !materials.is_empty() {
            let list: Vec<Value> = materials
                .iter()
                .map(|(name, d)| json!({"name": name, "digest": d}))
                .collect();
            link.insert("materials".into(), Value::Array(list));
        }
        let mut by = Map::new();
        if let Some(code) = run.get("exitcode").and_then(Value::as_i64) {
            if code != i64::from(EXITCODE_UNKNOWN) {
                by.insert("return-value".into(), json!(code));
            }
        }
        for (field, key) in [("stdout", "stdoutCaptured"), ("stderr", "stderrCaptured")] {
            let captured = run
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            by.insert(key.into(), json!(captured));
        }
        link.insert("byproducts".into(), Value::Object(by));
        if let Some(vars) = ctx
            .completed_json(super::environment::NAME)
            .and_then(|e| e.get("variables"))
            .and_then(Value::as_object)
        {
            if !vars.is_empty() {
                link.insert("environment".into(), Value::Object(vars.clone()));
            }
        }
        self.subjects = product_files::products(ctx)?
            .into_iter()
            .map(|(rel, p)| (format!("file:{rel}"), p.digest))
            .collect();
        Ok(Value::Object(link))
    }
    fn subjects(&self) -> BTreeMap<String, DigestSet> {
        self.subjects.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestors::CompletedAttestation;

    fn push(ctx: &mut AttestationContext, name: &str, json: Value) {
        ctx.completed.push(CompletedAttestation {
            name: name.into(),
            type_uri: String::new(),
            json,
            subjects: BTreeMap::new(),
            backrefs: BTreeMap::new(),
            starttime: String::new(),
            endtime: String::new(),
        });
    }

    #[test]
    fn unobserved_command_and_exit_are_not_the_link_s() {
        let mut ctx = AttestationContext::new("/nonexistent".into(), Vec::new());
        let mut a = LinkAttestor::new(&AttestorOptions::default()).unwrap();
        assert!(matches!(a.attest(&ctx), Err(AttestError::Absent(_))));
        push(
            &mut ctx,
            "command-run",
            json!({"cmd": [], "exitcode": EXITCODE_UNKNOWN,
                   "claimed": {"cmd": ["make"], "exitcode": 0}}),
        );
        let v = a.attest(&ctx).unwrap();
        assert_eq!(
            v,
            json!({"byproducts": {"stdoutCaptured": false, "stderrCaptured": false}})
        );
        assert!(a.subjects().is_empty());
    }
}
