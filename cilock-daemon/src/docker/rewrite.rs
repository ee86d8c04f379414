//! Reading and rewriting the bodies and queries that place containers:
//! container-create JSON and build queries (pure; unit-tested).
//!
//! The engine decodes the create body with Go's `encoding/json`, which
//! matches field names case-insensitively (with Unicode simple folding:
//! `ſ` is `s`, `K` (Kelvin) is `k`), lets a later duplicate key override
//! (and merge, for objects) an earlier one, reads only the first JSON value,
//! and (API wrapper `ContainerConfigWrapper`) also accepts HostConfig fields
//! at the top level when `HostConfig` is absent. So:
//! - [`scan_create`] collects *every* cgroup parent any of those spellings
//!   carries (a refusal then covers whichever one the engine uses);
//! - [`rewrite_create`] refuses a body with more than one HostConfig key,
//!   removes every spelling of `CgroupParent` (top level and in HostConfig)
//!   and sets `HostConfig.CgroupParent`: the engine reads exactly that value.

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::route;

/// Largest create body read, in bytes (beyond: 413).
pub const MAX_CREATE_BODY: usize = 1 << 20;

/// `a` equals `b` under Go's `encoding/json` field-name folding (`b` is an
/// ASCII field name).
pub fn go_fold_eq(a: &str, b: &str) -> bool {
    let mut ai = a.chars();
    let mut bi = b.chars();
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                let x = match x {
                    '\u{17F}' => 's',
                    '\u{212A}' => 'k',
                    c => c.to_ascii_lowercase(),
                };
                if x != y.to_ascii_lowercase() {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// What a create body says about placement and the image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateFacts {
    /// `Image` (the last one, as the engine reads it).
    pub image: String,
    /// Every cgroup parent any spelling carries (top level or HostConfig).
    pub cgroup_parents: Vec<String>,
    /// How many keys name HostConfig (exact duplicates included).
    pub host_configs: usize,
}

/// Scans a create body (its first JSON value, as the engine reads it).
pub fn scan_create(body: &[u8]) -> Result<CreateFacts, String> {
    let mut facts = CreateFacts::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(Top(&mut facts))
        .map_err(|e| format!("the create body is not a JSON object: {e}"))?;
    Ok(facts)
}

struct Top<'a>(&'a mut CreateFacts);

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a container create object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(k) = m.next_key::<String>()? {
            if go_fold_eq(&k, "HostConfig") {
                self.0.host_configs += 1;
                m.next_value_seed(Host(&mut *self.0))?;
            } else if go_fold_eq(&k, "CgroupParent") {
                if let Some(p) = m.next_value::<Option<String>>()? {
                    self.0.cgroup_parents.push(p);
                }
            } else if go_fold_eq(&k, "Image") {
                if let Some(i) = m.next_value::<Option<String>>()? {
                    self.0.image = i;
                }
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Host<'a>(&'a mut CreateFacts);

impl<'de> DeserializeSeed<'de> for Host<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Host<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a HostConfig object or null")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        while let Some(k) = m.next_key::<String>()? {
            if go_fold_eq(&k, "CgroupParent") {
                if let Some(p) = m.next_value::<Option<String>>()? {
                    self.0.cgroup_parents.push(p);
                }
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The create body with `HostConfig.CgroupParent` forced to `parent` (every
/// other spelling removed), and what the original said.
pub fn rewrite_create(body: &[u8], parent: &str) -> Result<(Vec<u8>, CreateFacts), String> {
    let facts = scan_create(body)?;
    if facts.host_configs > 1 {
        return Err(format!(
            "the create body names HostConfig {} times (keys differing only in case, or repeated): refused, the placement would be ambiguous",
            facts.host_configs
        ));
    }
    let mut it = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let value = it
        .next()
        .ok_or("the create body is empty")?
        .map_err(|e| format!("the create body is not JSON: {e}"))?;
    let Value::Object(mut top) = value else {
        return Err("the create body is not a JSON object".into());
    };
    top.retain(|k, _| !go_fold_eq(k, "CgroupParent"));
    let host_key = top.keys().find(|k| go_fold_eq(k, "HostConfig")).cloned();
    let mut host = match host_key.and_then(|k| top.remove(&k)) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("HostConfig in the create body is not an object".into()),
    };
    host.retain(|k, _| !go_fold_eq(k, "CgroupParent"));
    host.insert("CgroupParent".into(), Value::String(parent.into()));
    top.insert("HostConfig".into(), Value::Object(host));
    let out = serde_json::to_vec(&Value::Object(top)).map_err(|e| e.to_string())?;
    Ok((out, facts))
}

/// What a build query says (as the engine reads it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildFacts {
    /// `t=` values.
    pub tags: Vec<String>,
    /// `dockerfile=` (default `Dockerfile`).
    pub dockerfile: String,
    /// Every `cgroupparent=` value.
    pub cgroup_parents: Vec<String>,
}

/// Reads a build query.
pub fn build_facts(query: &str) -> BuildFacts {
    let dockerfile = route::first_value(query, "dockerfile")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "Dockerfile".into());
    BuildFacts {
        tags: route::all_values(query, "t"),
        dockerfile,
        cgroup_parents: route::all_values(query, "cgroupparent"),
    }
}

/// The build query with `cgroupparent` forced to `parent`.
pub fn rewrite_build_query(query: &str, parent: &str) -> String {
    route::force_value(query, "cgroupparent", parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: &str = "/cilock.steps/u0.s.1";

    fn rewritten(body: &str) -> Value {
        let (out, _) = rewrite_create(body.as_bytes(), STEP).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_cli_body_gets_the_step_parent_and_keeps_everything_else() {
        let body = r#"{"Image":"bb:local","Cmd":["cat","/f"],"HostConfig":{"AutoRemove":true,"CgroupParent":"","Binds":["/a:/b:ro"]}}"#;
        let v = rewritten(body);
        assert_eq!(v["HostConfig"]["CgroupParent"], STEP);
        assert_eq!(v["HostConfig"]["AutoRemove"], true);
        assert_eq!(v["HostConfig"]["Binds"][0], "/a:/b:ro");
        assert_eq!(v["Cmd"][1], "/f");
        let (_, facts) = rewrite_create(body.as_bytes(), STEP).unwrap();
        assert_eq!(facts.image, "bb:local");
        assert_eq!(facts.cgroup_parents, vec![""]);
    }

    #[test]
    fn every_spelling_of_the_parent_is_replaced() {
        let v = rewritten(
            r#"{"Image":"x","cgroupparent":"/esc","HostConfig":{"cgroupPARENT":"/a","CgroupParent":"/b"}}"#,
        );
        let host = v["HostConfig"].as_object().unwrap();
        assert_eq!(host.len(), 1);
        assert_eq!(host["CgroupParent"], STEP);
        assert!(v.get("cgroupparent").is_none());
        // No HostConfig at all (the top-level fields would be used): one is added.
        let v = rewritten(r#"{"Image":"x","CgroupParent":"/esc"}"#);
        assert_eq!(v["HostConfig"]["CgroupParent"], STEP);
        assert!(v.get("CgroupParent").is_none());
        // Kelvin sign and long s fold like Go's.
        let v = rewritten("{\"Ho\u{17F}tConfig\":{\"Memory\":1,\"CgroupParent\":\"/a\"}}");
        assert_eq!(v["HostConfig"]["Memory"], 1);
        assert_eq!(v["HostConfig"]["CgroupParent"], STEP);
        assert_eq!(v.as_object().unwrap().len(), 1);
        // null HostConfig.
        let v = rewritten(r#"{"HostConfig":null}"#);
        assert_eq!(v["HostConfig"]["CgroupParent"], STEP);
        // Trailing data after the first value is ignored, as the engine does.
        let v = rewritten(r#"{"Image":"x"} {"HostConfig":{}}"#);
        assert_eq!(v["Image"], "x");
    }

    #[test]
    fn ambiguous_or_bad_bodies_are_refused() {
        for bad in [
            r#"{"HostConfig":{},"hostconfig":{"CgroupParent":"/x"}}"#,
            r#"{"HostConfig":{"CgroupParent":"/x"},"HostConfig":{}}"#,
            r#"{"HostConfig":[]}"#,
            r#"{"HostConfig":{"CgroupParent":1}}"#,
            r#"[]"#,
            "",
            "{",
        ] {
            assert!(rewrite_create(bad.as_bytes(), STEP).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scan_sees_every_parent_the_engine_could_use() {
        let f = scan_create(
            br#"{"HostConfig":{"CgroupParent":"/cilock.steps/x"},"HostConfig":{"Memory":1},"cgroupParent":"/y","Image":"a","image":"b"}"#,
        )
        .unwrap();
        assert_eq!(f.cgroup_parents, vec!["/cilock.steps/x", "/y"]);
        assert_eq!(f.host_configs, 2);
        assert_eq!(f.image, "b");
        assert!(go_fold_eq("\u{212A}ey", "Key"));
        assert!(!go_fold_eq("Keys", "Key"));
    }

    #[test]
    fn build_queries() {
        let q = "t=a%3A1&t=b&dockerfile=ci%2FDockerfile&cgroupparent=%2Fcilock.steps%2Fx&version=1";
        let f = build_facts(q);
        assert_eq!(f.tags, vec!["a:1", "b"]);
        assert_eq!(f.dockerfile, "ci/Dockerfile");
        assert_eq!(f.cgroup_parents, vec!["/cilock.steps/x"]);
        assert_eq!(build_facts("").dockerfile, "Dockerfile");
        let r = rewrite_build_query(q, STEP);
        assert_eq!(build_facts(&r).cgroup_parents, vec![STEP]);
        assert_eq!(build_facts(&r).tags, vec!["a:1", "b"]);
    }
}
