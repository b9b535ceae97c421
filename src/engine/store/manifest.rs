//! Stage manifests: one small JSON file per committed stage, `manifests/<key>.json`, holding
//! the key parts, every output's digest and size, metrics and timings. The manifest on disk is
//! the source of truth for "this stage is done".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::artifact::{ArtifactKind, Retention};
use crate::engine::key::{Digest, KeyParts};

/// One output artifact as committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEntry {
    pub kind: ArtifactKind,
    pub digest: Digest,
    pub size_bytes: u64,
    pub retention: Retention,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// A chunked output's chunks, in order (`digest` is then `chunk_list_digest` of them and
    /// names no blob; `size_bytes` is their sum). Empty for every other kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

/// One blob of a chunked output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub digest: Digest,
    pub size_bytes: u64,
}

impl OutputEntry {
    /// The blobs that hold this output: its chunks, or the one blob `digest` names.
    pub fn blobs(&self) -> Vec<ChunkRef> {
        if self.kind == ArtifactKind::Chunks {
            self.chunks.clone()
        } else {
            vec![ChunkRef {
                digest: self.digest,
                size_bytes: self.size_bytes,
            }]
        }
    }
}

/// The digest standing for a chunked output: the chunks' digests and sizes, in order.
pub fn chunk_list_digest(chunks: &[ChunkRef]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"tyr-chunks");
    for c in chunks {
        h.update(&c.digest.0);
        h.update(&c.size_bytes.to_le_bytes());
    }
    Digest(*h.finalize().as_bytes())
}

/// A committed stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub key: Digest,
    pub parts: KeyParts,
    /// Pipeline and stage id of the run that committed it (another pipeline may reuse it).
    pub pipeline: String,
    pub stage: String,
    pub outputs: BTreeMap<String, OutputEntry>,
    /// Digest of the outputs' names, kinds and digests: what dependents see as this input.
    pub output_digest: Digest,
    pub metrics: BTreeMap<String, f64>,
    /// Unix time in seconds.
    pub committed_at_s: f64,
    pub duration_s: f64,
}

/// The digest dependents use for a stage's outputs. Depends only on content, not on
/// retention or publish paths.
pub fn output_digest(outputs: &BTreeMap<String, OutputEntry>) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"tyr-outputs");
    for (name, o) in outputs {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&[o.kind as u8]);
        h.update(&o.digest.0);
    }
    Digest(*h.finalize().as_bytes())
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps with string keys always serialises.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_bytes(b: &[u8]) -> std::result::Result<Self, String> {
        let m: Manifest = serde_json::from_slice(b).map_err(|e| e.to_string())?;
        if m.parts.key() != m.key {
            return Err("key does not match its parts".into());
        }
        if output_digest(&m.outputs) != m.output_digest {
            return Err("output digest does not match its outputs".into());
        }
        for (name, o) in &m.outputs {
            if o.kind == ArtifactKind::Chunks && chunk_list_digest(&o.chunks) != o.digest {
                return Err(format!("output `{name}`: digest does not match its chunks"));
            }
        }
        Ok(m)
    }
}

pub fn now_s() -> f64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    round_trip_safe(s, 1e3)
}

/// `x` rounded to `1/per_unit` (milliseconds: 1e3). serde_json (without its `float_roundtrip`
/// feature) reads back numbers of up to ~15 significant digits exactly, but can miss a 17-digit
/// one by an ulp; rounded times and durations survive a manifest's JSON → index → JSON trip
/// byte for byte, which the index's restore of a damaged manifest relies on.
pub fn round_trip_safe(x: f64, per_unit: f64) -> f64 {
    (x * per_unit).round() / per_unit
}

#[cfg(test)]
mod round_trip_tests {
    use super::round_trip_safe;

    /// Regression: a manifest restored from the index differed from the original in the last
    /// digit of `committed_at_s` (1795871379.9001763 read back as …765).
    #[test]
    fn rounded_times_survive_a_json_round_trip_exactly() {
        let mut x = 1_795_871_379.900_176_3_f64;
        for _ in 0..2000 {
            for per_unit in [1e3, 1e6] {
                let r = round_trip_safe(x, per_unit);
                let back: f64 = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
                assert_eq!(back.to_bits(), r.to_bits(), "{r}");
            }
            x += 0.123_456_789_1;
        }
        let d = round_trip_safe(0.002_720_493, 1e6);
        let back: f64 = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }
}
