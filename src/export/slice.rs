//! Slicing (ALGORITHM.md §10): the dense model plus one chosen variant per module becomes a
//! physically smaller model with per-layer dims. Query heads are reordered so heads sharing a K/V
//! head are contiguous (K/V ascending, then query ascending); q rows and `o_proj` columns move
//! together. A K/V head goes only when its whole group is gone; 0 kept units remove the branch.
//! `SlicedSource` slices lazily, one tensor per request, so large models stream layer by layer.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::model::llama_block::validate_dims;
use crate::model::{LayerDims, MemorySource, ModelConfig, TensorSource};
use crate::prune::slice::{HeadOrder, plan_heads};
use crate::{Error, Result};

/// One module's chosen variant: the sorted kept unit indices (query heads or FFN channels of the
/// dense layer) and the compact refit output weight in HF layout, `[hidden, n_kept·width]`
/// (`o_proj` with width = head_dim, `down_proj` with width 1), columns in `kept` order.
#[derive(Debug, Clone)]
pub struct ModuleChoice {
    pub kept: Vec<u32>,
    pub weight: ChoiceWeight,
}

/// A refit output weight: in memory, or read when the slicer asks for it (the chosen variants
/// of a 70B model are tens of GB; an export reads each as it writes that tensor).
#[derive(Clone)]
pub enum ChoiceWeight {
    Tensor(Tensor),
    Lazy {
        dims: [usize; 2],
        read: Arc<dyn Fn() -> Result<Tensor> + Send + Sync>,
    },
}

impl ChoiceWeight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            ChoiceWeight::Tensor(t) => t.dims().to_vec(),
            ChoiceWeight::Lazy { dims, .. } => dims.to_vec(),
        }
    }

    /// The weight (read now when lazy, and checked against its declared dims).
    pub fn tensor(&self) -> Result<Tensor> {
        match self {
            ChoiceWeight::Tensor(t) => Ok(t.clone()),
            ChoiceWeight::Lazy { dims, read } => {
                let t = read()?;
                if t.dims() != dims {
                    return Err(Error::msg(format!(
                        "a chosen variant's weight read back as {:?}, expected {dims:?}",
                        t.dims()
                    )));
                }
                Ok(t)
            }
        }
    }
}

impl From<Tensor> for ChoiceWeight {
    fn from(t: Tensor) -> Self {
        ChoiceWeight::Tensor(t)
    }
}

impl std::fmt::Debug for ChoiceWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChoiceWeight::Tensor(t) => write!(f, "Tensor({:?})", t.dims()),
            ChoiceWeight::Lazy { dims, .. } => write!(f, "Lazy({dims:?})"),
        }
    }
}

/// The chosen variants of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerChoice {
    pub attn: ModuleChoice,
    pub ffn: ModuleChoice,
}

/// How one layer is sliced, resolved from the dense dims and the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// Dense query heads in their new storage order (grouped by K/V head).
    pub heads: Vec<usize>,
    /// Position of each entry of `heads` in the choice's `kept` list (its `o_proj` column block).
    pub weight_blocks: Vec<usize>,
    /// Dense K/V heads kept, ascending.
    pub kv_heads: Vec<usize>,
    /// Dense FFN channels kept, ascending.
    pub channels: Vec<usize>,
    /// The resulting dims.
    pub dims: LayerDims,
}

/// `prune::slice::check_kept`, its error naming the layer and module.
fn check_kept(l: usize, module: &'static str, kept: &[u32], n: usize) -> Result<()> {
    crate::prune::slice::check_kept(kept, n).map_err(|e| Error::ExportChoice {
        layer: l,
        module,
        msg: e.to_string(),
    })
}

/// Resolves layer `l`'s slicing from its dense dims and its choice, checking the choice.
pub fn plan_layer(cfg: &ModelConfig, l: usize, choice: &LayerChoice) -> Result<LayerPlan> {
    let dense = cfg.layers.get(l).ok_or_else(|| Error::ExportChoice {
        layer: l,
        module: "layer",
        msg: format!("the model has {} layers", cfg.n_layers()),
    })?;
    validate_dims(l, dense)?;
    let (h, dh) = (cfg.hidden_size, cfg.head_dim);
    check_kept(l, "attention", &choice.attn.kept, dense.n_q)?;
    check_kept(l, "ffn", &choice.ffn.kept, dense.d_ff)?;
    let shape_err = |module: &'static str, want: [usize; 2], w: &ChoiceWeight| {
        if w.dims() == want {
            Ok(())
        } else {
            Err(Error::ExportChoice {
                layer: l,
                module,
                msg: format!("refit weight has shape {:?}, expected {want:?}", w.dims()),
            })
        }
    };
    let n_heads = choice.attn.kept.len();
    if n_heads > 0 {
        shape_err("attention", [h, n_heads * dh], &choice.attn.weight)?;
    }
    if !choice.ffn.kept.is_empty() {
        shape_err("ffn", [h, choice.ffn.kept.len()], &choice.ffn.weight)?;
    }
    // New order: by dense K/V head, then by dense query index.
    let heads = plan_heads(
        &dense.kv_map,
        dense.n_kv,
        &choice.attn.kept,
        HeadOrder::GroupedByKv,
    )
    .map_err(|e| Error::ExportChoice {
        layer: l,
        module: "attention",
        msg: e.to_string(),
    })?;
    let channels: Vec<usize> = choice.ffn.kept.iter().map(|&c| c as usize).collect();
    let dims = LayerDims {
        n_q: heads.heads.len(),
        n_kv: heads.kv_heads.len(),
        kv_map: heads.kv_map,
        d_ff: channels.len(),
    };
    Ok(LayerPlan {
        heads: heads.heads,
        weight_blocks: heads.blocks,
        kv_heads: heads.kv_heads,
        channels,
        dims,
    })
}

/// The sliced model's configuration: the dense one with each layer's dims replaced.
pub fn sliced_config(cfg: &ModelConfig, choices: &[LayerChoice]) -> Result<ModelConfig> {
    Ok(SlicedSource::new(cfg, &NoTensors, choices)?
        .config()
        .clone())
}

struct NoTensors;

impl TensorSource for NoTensors {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        Err(Error::MissingTensor {
            tensor: name.into(),
            location: "no tensors".into(),
        })
    }
    fn contains(&self, _name: &str) -> bool {
        false
    }
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The sliced model as a lazy `TensorSource` over the dense one: each `tensor` call reads one
/// dense tensor and selects its kept rows (or returns the refit weight, columns reordered).
pub struct SlicedSource<'a> {
    dense: &'a dyn TensorSource,
    cfg: ModelConfig,
    plans: Vec<LayerPlan>,
    choices: &'a [LayerChoice],
    head_dim: usize,
}

impl<'a> SlicedSource<'a> {
    /// Checks every choice against the dense config and plans each layer.
    pub fn new(
        dense_cfg: &ModelConfig,
        dense: &'a dyn TensorSource,
        choices: &'a [LayerChoice],
    ) -> Result<Self> {
        if choices.len() != dense_cfg.n_layers() {
            return Err(Error::ExportChoice {
                layer: choices.len().min(dense_cfg.n_layers()),
                module: "layer",
                msg: format!(
                    "{} layer choices for a {}-layer model",
                    choices.len(),
                    dense_cfg.n_layers()
                ),
            });
        }
        let plans = (0..choices.len())
            .map(|l| plan_layer(dense_cfg, l, &choices[l]))
            .collect::<Result<Vec<_>>>()?;
        let mut cfg = dense_cfg.clone();
        cfg.layers = plans.iter().map(|p| p.dims.clone()).collect();
        Ok(SlicedSource {
            dense,
            cfg,
            plans,
            choices,
            head_dim: dense_cfg.head_dim,
        })
    }

    /// The sliced model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The per-layer slicing plans.
    pub fn plans(&self) -> &[LayerPlan] {
        &self.plans
    }

    /// Materialises every tensor (small models, tests).
    pub fn to_memory(&self) -> Result<MemorySource> {
        let mut m = MemorySource::new();
        for name in self.names() {
            let t = self.tensor(&name)?;
            m.insert(name, t);
        }
        Ok(m)
    }

    fn sliced(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((l, module)) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, m)| Some((l.parse::<usize>().ok()?, m)))
        else {
            return Ok(None);
        };
        let (Some(plan), Some(choice)) = (self.plans.get(l), self.choices.get(l)) else {
            return Ok(None);
        };
        let dh = self.head_dim;
        let head_rows = |heads: &[usize]| -> Vec<usize> {
            heads.iter().flat_map(|&q| q * dh..(q + 1) * dh).collect()
        };
        let read = || self.dense.tensor(name);
        let t = match module {
            "self_attn.q_proj.weight" | "self_attn.q_proj.bias" => {
                select(&read()?, 0, &head_rows(&plan.heads))?
            }
            "self_attn.k_proj.weight"
            | "self_attn.k_proj.bias"
            | "self_attn.v_proj.weight"
            | "self_attn.v_proj.bias" => select(&read()?, 0, &head_rows(&plan.kv_heads))?,
            "self_attn.o_proj.weight" => select(
                &choice.attn.weight.tensor()?,
                1,
                &head_rows(&plan.weight_blocks),
            )?,
            "mlp.gate_proj.weight"
            | "mlp.gate_proj.bias"
            | "mlp.up_proj.weight"
            | "mlp.up_proj.bias" => select(&read()?, 0, &plan.channels)?,
            "mlp.down_proj.weight" => choice.ffn.weight.tensor()?,
            _ => read()?,
        };
        Ok(Some(t))
    }

    /// Whether the sliced model has tensor `name` (dense names of removed branches are gone).
    fn keeps(&self, name: &str) -> bool {
        let Some((l, module)) = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, m)| Some((l.parse::<usize>().ok()?, m)))
        else {
            return true;
        };
        match self.plans.get(l) {
            None => true,
            Some(p) if module.starts_with("self_attn.") => p.dims.n_q > 0,
            Some(p) if module.starts_with("mlp.") => p.dims.d_ff > 0,
            Some(_) => true,
        }
    }
}

/// Rows (`dim` 0) or columns (`dim` 1) `idx` of `t`, in that order.
fn select(t: &Tensor, dim: usize, idx: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    let n = idx.len();
    let ids = Tensor::from_vec(idx, n, &Device::Cpu)?;
    Ok(t.index_select(&ids, dim)?.contiguous()?)
}

impl TensorSource for SlicedSource<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        if !self.contains(name) {
            return Err(Error::MissingTensor {
                tensor: name.into(),
                location: "sliced model".into(),
            });
        }
        match self.sliced(name)? {
            Some(t) => Ok(t),
            None => self.dense.tensor(name),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.keeps(name) && self.dense.contains(name)
    }

    fn names(&self) -> Vec<String> {
        self.dense
            .names()
            .into_iter()
            .filter(|n| self.keeps(n))
            .collect()
    }

    fn location(&self, name: &str) -> String {
        format!("sliced model over {}", self.dense.location(name))
    }
}

/// Slices the whole model into memory: its config and weights.
pub fn slice_model(
    cfg: &ModelConfig,
    src: &dyn TensorSource,
    choices: &[LayerChoice],
) -> Result<(ModelConfig, MemorySource)> {
    let s = SlicedSource::new(cfg, src, choices)?;
    Ok((s.config().clone(), s.to_memory()?))
}
