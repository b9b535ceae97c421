//! Content keys. A stage's key is BLAKE3 over a canonical, typed encoding of everything that
//! decides its result: engine format version, kind, kind `VERSION`, params, the digests of its
//! inputs in declared order, seed, dtype and device class, and the versions of the shared code
//! the stage runs (`Stage::code_versions`, e.g. the model forward). The parts are kept beside
//! the key (in the manifest) so `tyr plan` can say which one changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Bumped whenever the engine's encoding of keys, manifests or blobs changes.
pub const ENGINE_FORMAT: u32 = 1;

/// A BLAKE3 digest, shown and stored as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::msg(format!("`{s}` is not a 64-digit hex digest"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One declared input of a stage as it enters the key: slot name and the output digest of each
/// upstream stage bound to it, in declared order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    pub slot: String,
    pub digests: Vec<Digest>,
}

/// Everything a stage's result depends on. Hashing the bincode encoding of this struct gives
/// the key; bincode is length-prefixed and typed, so no two different part lists collide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyParts {
    pub engine_format: u32,
    pub kind: String,
    pub version: u32,
    /// The params after typed parsing (defaults filled in), as canonical JSON (sorted keys).
    pub params: String,
    pub inputs: Vec<InputDigest>,
    /// State outside the store the result depends on (e.g. a source file's digest), from
    /// `Stage::fingerprint`.
    pub external: Option<String>,
    pub seed: u64,
    pub dtype: String,
    pub device_class: String,
    /// Versions of shared code whose bits the result depends on, by name (`forward`), from
    /// `Stage::code_versions`. Absent in manifests written before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub code: BTreeMap<String, u32>,
}

/// The parts hashed before `code` existed, in their original order: keeping this encoding
/// means a stage that declares no code versions keeps the key it always had.
#[derive(Serialize)]
struct LegacyParts<'a> {
    engine_format: u32,
    kind: &'a str,
    version: u32,
    params: &'a str,
    inputs: &'a [InputDigest],
    external: &'a Option<String>,
    seed: u64,
    dtype: &'a str,
    device_class: &'a str,
}

impl KeyParts {
    pub fn key(&self) -> Digest {
        let legacy = LegacyParts {
            engine_format: self.engine_format,
            kind: &self.kind,
            version: self.version,
            params: &self.params,
            inputs: &self.inputs,
            external: &self.external,
            seed: self.seed,
            dtype: &self.dtype,
            device_class: &self.device_class,
        };
        // Encoding plain structs of strings and integers cannot fail.
        let bytes = bincode::serialize(&legacy).unwrap_or_default();
        let mut h = blake3::Hasher::new();
        h.update(b"tyr-stage-key");
        h.update(&bytes);
        if !self.code.is_empty() {
            h.update(b"code");
            h.update(&bincode::serialize(&self.code).unwrap_or_default());
        }
        Digest(*h.finalize().as_bytes())
    }

    /// Human-readable reasons why `self` differs from `old` (empty when equal).
    pub fn diff(&self, old: &KeyParts) -> Vec<String> {
        let mut out = Vec::new();
        if self.engine_format != old.engine_format {
            out.push(format!(
                "engine format {} → {}",
                old.engine_format, self.engine_format
            ));
        }
        if self.kind != old.kind {
            out.push(format!("kind `{}` → `{}`", old.kind, self.kind));
        }
        if self.version != old.version {
            out.push(format!("kind version {} → {}", old.version, self.version));
        }
        if self.params != old.params {
            out.push(format!(
                "params changed: {}",
                params_diff(&old.params, &self.params)
            ));
        }
        if self.inputs != old.inputs {
            out.push(inputs_diff(&old.inputs, &self.inputs));
        }
        if self.external != old.external {
            out.push(format!(
                "external input changed: {} → {}",
                old.external.as_deref().unwrap_or("(none)"),
                self.external.as_deref().unwrap_or("(none)")
            ));
        }
        if self.seed != old.seed {
            out.push(format!("seed {} → {}", old.seed, self.seed));
        }
        if self.dtype != old.dtype {
            out.push(format!("dtype {} → {}", old.dtype, self.dtype));
        }
        if self.device_class != old.device_class {
            out.push(format!(
                "device {} → {}",
                old.device_class, self.device_class
            ));
        }
        if self.code != old.code {
            let names: std::collections::BTreeSet<&String> =
                self.code.keys().chain(old.code.keys()).collect();
            for name in names {
                let (a, b) = (old.code.get(name), self.code.get(name));
                if a != b {
                    let show = |v: Option<&u32>| v.map_or("(none)".to_string(), u32::to_string);
                    out.push(format!("{name} code version {} → {}", show(a), show(b)));
                }
            }
        }
        out
    }
}

/// The changed params as `path: old → new`, descending into nested tables so a big table
/// (e.g. a round's grids) shows only what changed; long values are cut, at most 6 entries.
fn params_diff(old: &str, new: &str) -> String {
    use serde_json::Value;
    let parse = |s: &str| serde_json::from_str::<Value>(s).ok();
    let (Some(a), Some(b)) = (parse(old), parse(new)) else {
        return format!("{old} → {new}");
    };
    fn short(v: Option<&Value>) -> String {
        let s = v.map_or("(absent)".to_string(), Value::to_string);
        if s.chars().count() > 60 {
            format!("{}…", s.chars().take(57).collect::<String>())
        } else {
            s
        }
    }
    fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&p, x.get(k), y.get(k), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {} → {}", short(a), short(b))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    if out.len() > 6 {
        let more = out.len() - 6;
        out.truncate(6);
        out.push(format!("… {more} more"));
    }
    out.join(", ")
}

fn inputs_diff(old: &[InputDigest], new: &[InputDigest]) -> String {
    let mut changed = Vec::new();
    for n in new {
        match old.iter().find(|o| o.slot == n.slot) {
            Some(o) if o == n => {}
            Some(_) => changed.push(format!("input `{}` changed", n.slot)),
            None => changed.push(format!("input `{}` added", n.slot)),
        }
    }
    for o in old.iter().filter(|o| !new.iter().any(|n| n.slot == o.slot)) {
        changed.push(format!("input `{}` removed", o.slot));
    }
    changed.join(", ")
}

/// Serialises `value` to JSON with every object's keys sorted, so equal params always give
/// equal text whatever order the fields were written in.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<String> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let v = serde_json::to_value(value).map_err(|e| Error::msg(format!("params: {e}")))?;
    serde_json::to_string(&sort(v)).map_err(|e| Error::msg(format!("params: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            engine_format: ENGINE_FORMAT,
            kind: "k".into(),
            version: 1,
            params: r#"{"a":1,"b":"x"}"#.into(),
            inputs: vec![],
            external: None,
            seed: 0,
            dtype: "f32".into(),
            device_class: "cpu".into(),
            code: BTreeMap::new(),
        }
    }

    #[test]
    fn a_stage_without_code_versions_keeps_its_old_key() {
        // The key of these parts as computed before `code` existed (bincode of the nine
        // fields in order), so stores written then stay valid for such stages.
        #[derive(Serialize)]
        struct Old {
            engine_format: u32,
            kind: String,
            version: u32,
            params: String,
            inputs: Vec<InputDigest>,
            external: Option<String>,
            seed: u64,
            dtype: String,
            device_class: String,
        }
        let p = parts();
        let old = Old {
            engine_format: p.engine_format,
            kind: p.kind.clone(),
            version: p.version,
            params: p.params.clone(),
            inputs: vec![],
            external: None,
            seed: 0,
            dtype: p.dtype.clone(),
            device_class: p.device_class.clone(),
        };
        let mut h = blake3::Hasher::new();
        h.update(b"tyr-stage-key");
        h.update(&bincode::serialize(&old).unwrap());
        assert_eq!(p.key(), Digest(*h.finalize().as_bytes()));
    }

    #[test]
    fn a_code_version_changes_the_key_and_is_named_in_the_diff() {
        let base = KeyParts {
            code: BTreeMap::from([("forward".to_string(), 1)]),
            ..parts()
        };
        let bumped = KeyParts {
            code: BTreeMap::from([("forward".to_string(), 2)]),
            ..parts()
        };
        assert_ne!(base.key(), parts().key());
        assert_ne!(base.key(), bumped.key());
        assert_eq!(
            bumped.diff(&base),
            vec!["forward code version 1 → 2".to_string()]
        );
        assert_eq!(
            base.diff(&parts()),
            vec!["forward code version (none) → 1".to_string()]
        );
    }

    #[test]
    fn every_part_changes_the_key_and_is_named_in_the_diff() {
        let base = parts();
        let mut p = base.clone();
        p.params = r#"{"a":2,"b":"x"}"#.into();
        assert_ne!(p.key(), base.key());
        assert_eq!(p.diff(&base), vec!["params changed: a: 1 → 2".to_string()]);
        let mut s = base.clone();
        s.seed = 1;
        assert_ne!(s.key(), base.key());
        assert_eq!(s.diff(&base), vec!["seed 0 → 1".to_string()]);
        assert!(base.diff(&base.clone()).is_empty());
    }

    #[test]
    fn a_nested_params_change_names_its_path_and_cuts_long_values() {
        let base = KeyParts {
            params: format!(
                r#"{{"g":{{"budget":135,"levels":{:?}}},"n":1}}"#,
                vec![7; 40]
            ),
            ..parts()
        };
        let p = KeyParts {
            params: format!(
                r#"{{"g":{{"budget":68,"levels":{:?}}},"n":1}}"#,
                vec![8; 40]
            ),
            ..parts()
        };
        let d = p.diff(&base);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with("params changed: g.budget: 135 → 68, g.levels: [7,7,"),
            "{}",
            d[0]
        );
        assert!(d[0].contains("…") && d[0].len() < 200, "{}", d[0]);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut m = serde_json::Map::new();
        m.insert("z".into(), 1.into());
        m.insert("a".into(), 2.into());
        assert_eq!(canonical_json(&m).unwrap(), r#"{"a":2,"z":1}"#);
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.hex()).unwrap(), d);
        assert!(Digest::parse("xyz").is_err());
    }
}
