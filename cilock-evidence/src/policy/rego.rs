//! Rego evaluation through regorus, with Witness semantics: legacy
//! (`deny[msg] { … }`) and v1 (`import rego.v1`, `deny contains msg if`)
//! modules in one engine, any package name, `data.<pkg>.deny` queried once
//! per distinct package (modules sharing a package merge), and `deny` must
//! be a set or array of strings.

use std::collections::BTreeSet;

use regorus::{Engine, Value};

/// One Rego module of a policy (`regopolicies[]`).
#[derive(Clone, Debug)]
pub struct RegoModule {
    /// The policy's name for the module.
    pub name: String,
    /// The Rego source.
    pub source: String,
}

/// A Rego problem that prevents evaluation (never a denial).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegoError {
    /// The module does not parse.
    #[error("rego module {name:?} does not compile: {detail}")]
    Compile {
        /// Module name.
        name: String,
        /// The parser's message.
        detail: String,
    },
    /// The module is not UTF-8 text.
    #[error("rego module {name:?} is not UTF-8 text")]
    NotText {
        /// Module name.
        name: String,
    },
    /// Evaluation failed (runtime error, bad input).
    #[error("evaluating {query}: {detail}")]
    Eval {
        /// The query.
        query: String,
        /// The engine's message.
        detail: String,
    },
    /// `deny` is missing or not a set/array of strings.
    #[error("{query} must be a set or array of strings, got {got}")]
    InvalidDeny {
        /// The query.
        query: String,
        /// What it evaluated to.
        got: String,
    },
}

/// A compiled set of Rego modules, ready to evaluate against inputs.
#[derive(Clone)]
pub struct CompiledRego {
    engine: Engine,
    packages: Vec<String>,
}

impl std::fmt::Debug for CompiledRego {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRego")
            .field("packages", &self.packages)
            .finish_non_exhaustive()
    }
}

impl CompiledRego {
    /// Parses every module into one engine (v0 unless a module imports
    /// `rego.v1`, as OPA's v0-compatible parser does).
    pub fn compile(modules: &[RegoModule]) -> Result<CompiledRego, RegoError> {
        let mut engine = Engine::new();
        engine.set_rego_v0(true);
        let mut packages = BTreeSet::new();
        for (i, m) in modules.iter().enumerate() {
            let file = format!("{}#{}.rego", sanitize(&m.name), i);
            let pkg =
                engine
                    .add_policy(file, m.source.clone())
                    .map_err(|e| RegoError::Compile {
                        name: m.name.clone(),
                        detail: e.to_string(),
                    })?;
            packages.insert(pkg);
        }
        Ok(CompiledRego {
            engine,
            packages: packages.into_iter().collect(),
        })
    }

    /// The distinct packages (`data.…`).
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// Evaluates `data.<pkg>.deny` for every package with `input`; returns
    /// every deny message (empty: allowed).
    pub fn deny(&self, input: &serde_json::Value) -> Result<Vec<String>, RegoError> {
        let mut engine = self.engine.clone();
        let input_json = input.to_string();
        let value = Value::from_json_str(&input_json).map_err(|e| RegoError::Eval {
            query: "input".into(),
            detail: e.to_string(),
        })?;
        engine.set_input(value);
        let mut out = Vec::new();
        for pkg in &self.packages {
            let query = format!("{pkg}.deny");
            let v = engine
                .eval_rule(query.clone())
                .map_err(|e| RegoError::Eval {
                    query: query.clone(),
                    detail: e.to_string(),
                })?;
            let items: Vec<&Value> = match &v {
                Value::Set(s) => s.iter().collect(),
                Value::Array(a) => a.iter().collect(),
                other => {
                    return Err(RegoError::InvalidDeny {
                        query,
                        got: describe(other),
                    })
                }
            };
            for item in items {
                match item {
                    Value::String(s) => out.push(s.to_string()),
                    other => {
                        return Err(RegoError::InvalidDeny {
                            query,
                            got: format!("an element that is {}", describe(other)),
                        })
                    }
                }
            }
        }
        Ok(out)
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined (no `deny` rule)".into(),
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(_) => "a number".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Object(_) => "an object".into(),
        _ => "another value".into(),
    }
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "module".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(name: &str, src: &str) -> RegoModule {
        RegoModule {
            name: name.into(),
            source: src.into(),
        }
    }

    #[test]
    fn legacy_and_v1_merge_in_one_package() {
        let a = m(
            "a",
            "package cilock.verify\n\ndeny[msg] {\n  input.x == 1\n  msg := \"x is one\"\n}\n",
        );
        let b = m(
            "b",
            "package cilock.verify\nimport rego.v1\ndeny contains msg if {\n  input.y == 2\n  msg := sprintf(\"y is %d\", [input.y])\n}\n",
        );
        let c = m("c", "package other.pkg\ndeny[\"always\"] { true }\n");
        let r = CompiledRego::compile(&[a, b, c]).unwrap();
        assert_eq!(r.packages(), ["data.cilock.verify", "data.other.pkg"]);
        let mut d = r.deny(&json!({"x": 1, "y": 2})).unwrap();
        d.sort();
        assert_eq!(d, ["always", "x is one", "y is 2"]);
        let r2 = CompiledRego::compile(&[m(
            "a",
            "package p\ndeny[msg] { input.x == 1\n msg := \"no\" }\n",
        )])
        .unwrap();
        assert!(r2.deny(&json!({"x": 2})).unwrap().is_empty());
    }

    #[test]
    fn errors_are_distinct_from_denials() {
        assert!(matches!(
            CompiledRego::compile(&[m("bad", "package p\ndeny[msg] { ")]),
            Err(RegoError::Compile { .. })
        ));
        let r = CompiledRego::compile(&[m("num", "package p\ndeny := 5\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. })
        ));
        let r = CompiledRego::compile(&[m("nums", "package p\ndeny[x] { x := 5 }\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. })
        ));
        let r = CompiledRego::compile(&[m("arr", "package p\ndeny := [\"a\", \"b\"]\n")]).unwrap();
        assert_eq!(r.deny(&json!({})).unwrap(), ["a", "b"]);
        // No deny rule at all: an error too, never an empty (passing) set.
        let r = CompiledRego::compile(&[m("none", "package p\nallow := true\n")]).unwrap();
        assert!(matches!(
            r.deny(&json!({})),
            Err(RegoError::InvalidDeny { .. } | RegoError::Eval { .. })
        ));
    }
}
