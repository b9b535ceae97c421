//! How the activations X_ℓ (`supernet::acts::Acts`) travel between layer stages: one transient
//! tensor artifact holding `x` ([tokens, hidden] f32, pieces in pool order) and `lengths`
//! ([pieces] u32).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::engine::{ArtifactSet, Outputs};
use crate::supernet::acts::Acts;
use crate::{Error, Result};

/// Reads output `name` of `set`.
pub fn read(set: &ArtifactSet, name: &str) -> Result<Acts> {
    let t = set.tensors(name)?;
    let get = |k: &str| {
        t.get(k).cloned().ok_or_else(|| Error::EngineArtifact {
            stage: set.stage().to_string(),
            output: name.to_string(),
            message: format!("activation set lacks `{k}`"),
        })
    };
    let lengths: Vec<usize> = get("lengths")?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let x = get("x")?;
    let tokens: usize = lengths.iter().sum();
    if x.rank() != 2 || x.dim(0)? != tokens {
        return Err(Error::EngineArtifact {
            stage: set.stage().to_string(),
            output: name.to_string(),
            message: format!(
                "`x` has shape {:?} for pieces of {tokens} tokens in all",
                x.dims()
            ),
        });
    }
    Ok(Acts { x, lengths })
}

/// Stores `acts` as transient output `name`.
pub fn write(acts: &Acts, out: &mut Outputs, name: &str) -> Result<()> {
    let lengths: Vec<u32> = acts.lengths.iter().map(|&l| l as u32).collect();
    let n = lengths.len();
    let map = BTreeMap::from([
        ("x".to_string(), acts.x.contiguous()?),
        (
            "lengths".to_string(),
            Tensor::from_vec(lengths, n, &Device::Cpu)?,
        ),
    ]);
    out.tensors(name, map).transient();
    Ok(())
}
