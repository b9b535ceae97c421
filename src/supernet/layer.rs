//! One decoder layer as the supernet sees it: the dense weights as flat f32, a block whose
//! `o_proj`/`down_proj` are replaced (an averaged or masked weight), the statistics pass over
//! `X_l`, and a physically pruned block assembled from a chosen attention and FFN variant (what
//! the search scores and `eval-ppl` evaluates).

use candle_core::{Device, Tensor};

use super::acts::{ActSource, for_batches};
use crate::model::{Block, BlockWeights, Compute, LayerDims, ModelConfig};
use crate::prune::UnitLayout;
use crate::prune::local::{Variant, VariantMetrics};
use crate::prune::slice::{
    AttnDims, AttnWeights as SliceAttn, HeadOrder, check_kept, plan_heads, select_row_units,
    slice_attention,
};
use crate::prune::stats::Hessian;
use crate::{Error, Result};

/// A tensor as a flat f32 vector.
pub fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Dense layer `l`: its dims (which must be dense: both branches present) and weights.
pub struct DenseLayer {
    pub layer: usize,
    pub dims: LayerDims,
    /// Host f32 weights (the pruning math reads them as flat vectors).
    pub weights: BlockWeights,
    pub hidden: usize,
    pub head_dim: usize,
    /// Where the blocks made from this layer run (`block_with`, `assemble_block`).
    pub compute: Compute,
    /// On a device: the dense rows pruned blocks select from, placed there on first use.
    pub device_rows: DeviceRows,
}

/// The dense weights a pruned block keeps rows of (q/k/v, gate/up and their biases), on the
/// layer's device in its dtype. Made once per layer, so assembling a candidate's block there
/// selects rows on the device and moves only the variants' `o_proj` / `down_proj` over, instead
/// of slicing the whole layer on the host and uploading it (a search assembles hundreds).
#[derive(Debug, Default)]
pub struct DeviceRows(std::sync::OnceLock<DenseRows>);

#[derive(Debug)]
pub struct DenseRows {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor,
    up: Tensor,
    q_bias: Option<Tensor>,
    k_bias: Option<Tensor>,
    v_bias: Option<Tensor>,
    gate_bias: Option<Tensor>,
    up_bias: Option<Tensor>,
}

impl DeviceRows {
    fn get_or_make(&self, make: impl FnOnce() -> Result<DenseRows>) -> Result<&DenseRows> {
        if let Some(r) = self.0.get() {
            return Ok(r);
        }
        let r = make()?;
        Ok(self.0.get_or_init(|| r))
    }
}

impl DenseLayer {
    /// Layer `l` for the packed CPU path.
    pub fn load(cfg: &ModelConfig, l: usize, src: &dyn crate::model::TensorSource) -> Result<Self> {
        Self::load_on(cfg, l, src, &Compute::Packed)
    }

    /// Layer `l`, whose blocks run on `compute`.
    pub fn load_on(
        cfg: &ModelConfig,
        l: usize,
        src: &dyn crate::model::TensorSource,
        compute: &Compute,
    ) -> Result<Self> {
        // The host weights as read: the pruning math and the blocks made from them take them
        // from here, so no block is built (and packed) only to be read back.
        let (dims, weights) = BlockWeights::load_layer(cfg, l, src)?;
        if dims.n_q == 0 || dims.d_ff == 0 {
            return Err(Error::LayerDims {
                layer: l,
                msg: "the supernet needs a layer with both attention and FFN".into(),
            });
        }
        Ok(DenseLayer {
            layer: l,
            dims,
            weights,
            hidden: cfg.hidden_size,
            head_dim: cfg.head_dim,
            compute: compute.clone(),
            device_rows: DeviceRows::default(),
        })
    }

    pub fn attn_layout(&self) -> UnitLayout {
        UnitLayout::heads(self.dims.n_q, self.head_dim)
    }

    pub fn ffn_layout(&self) -> UnitLayout {
        UnitLayout::channels(self.dims.d_ff)
    }

    fn attn(&self) -> Result<&crate::model::AttnWeights> {
        self.weights.attn.as_ref().ok_or_else(|| Error::LayerDims {
            layer: self.layer,
            msg: "attention weights missing".into(),
        })
    }

    fn mlp(&self) -> Result<&crate::model::MlpWeights> {
        self.weights.mlp.as_ref().ok_or_else(|| Error::LayerDims {
            layer: self.layer,
            msg: "FFN weights missing".into(),
        })
    }

    /// The dense `o_proj` [hidden, n_q·d_h] as flat f32.
    pub fn o_proj(&self) -> Result<Vec<f32>> {
        flat(&self.attn()?.o_proj)
    }

    pub fn q_proj(&self) -> Result<Vec<f32>> {
        flat(&self.attn()?.q_proj)
    }

    /// The dense `down_proj` [hidden, d_ff] as flat f32.
    pub fn down_proj(&self) -> Result<Vec<f32>> {
        flat(&self.mlp()?.down_proj)
    }

    pub fn gate_up(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let m = self.mlp()?;
        Ok((flat(&m.gate_proj)?, flat(&m.up_proj)?))
    }

    /// The dense-shaped block with `o_proj` / `down_proj` replaced where given (full shape,
    /// HF layout, flat f32).
    pub fn block_with(
        &self,
        cfg: &ModelConfig,
        o_proj: Option<&[f32]>,
        down_proj: Option<&[f32]>,
    ) -> Result<Block> {
        let mut w = self.weights.clone();
        let (h, q) = (self.hidden, self.dims.n_q * self.head_dim);
        if let (Some(o), Some(a)) = (o_proj, w.attn.as_mut()) {
            a.o_proj = Tensor::from_vec(o.to_vec(), (h, q), &Device::Cpu)?;
        }
        if let (Some(d), Some(m)) = (down_proj, w.mlp.as_mut()) {
            m.down_proj = Tensor::from_vec(d.to_vec(), (h, self.dims.d_ff), &Device::Cpu)?;
        }
        Block::from_weights_on(cfg, self.layer, self.dims.clone(), w, &self.compute)
    }
}

/// Which Hessians a statistics pass collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collect {
    pub o_proj: bool,
    pub down_proj: bool,
}

/// `H_o` / `H_d` of `block` on `x` (the batches in their fixed order). On the packed path each
/// batch's taps are added on the host (`Hessian::accumulate_tensor`); on a device the products
/// `XᵀX` are summed there in f32 and copied to the host once, at the end.
pub fn collect_stats(
    block: &Block,
    x: &dyn ActSource,
    what: Collect,
) -> Result<(Option<Hessian>, Option<Hessian>)> {
    let on_host = block.placement().0.is_cpu();
    let mut h_o = Gram::default();
    let mut h_d = Gram::default();
    for_batches(x, |xb| {
        let (_, taps) = block.forward_observed(xb)?;
        if what.o_proj
            && let Some(t) = &taps.o_proj_input
        {
            h_o.add(t, on_host)?;
        }
        if what.down_proj
            && let Some(t) = &taps.down_proj_input
        {
            h_d.add(t, on_host)?;
        }
        Ok(())
    })?;
    Ok((h_o.finish()?, h_d.finish()?))
}

/// One Hessian being accumulated: on the host, or as a device f32 sum with its row count.
#[derive(Default)]
struct Gram {
    host: Option<Hessian>,
    device: Option<(Tensor, u64)>,
}

impl Gram {
    fn add(&mut self, t: &Tensor, on_host: bool) -> Result<()> {
        let dim = t.dim(candle_core::D::Minus1)?;
        if on_host {
            return self
                .host
                .get_or_insert_with(|| Hessian::zeros(dim))
                .accumulate_tensor(t);
        }
        let x = t.to_dtype(candle_core::DType::F32)?.reshape(((), dim))?;
        let rows = x.dim(0)? as u64;
        let g = x.t()?.matmul(&x)?;
        self.device = Some(match self.device.take() {
            None => (g, rows),
            Some((acc, n)) => ((acc + g)?, n + rows),
        });
        Ok(())
    }

    fn finish(self) -> Result<Option<Hessian>> {
        match (self.host, self.device) {
            (Some(h), _) => Ok(Some(h)),
            (None, Some((g, rows))) => {
                let dim = g.dim(0)?;
                let data = g.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
                Ok(Some(Hessian::from_parts(dim, data, rows)?))
            }
            (None, None) => Ok(None),
        }
    }
}

/// Metrics of a variant made without local pruning (a baseline: no refit, error not measured).
pub fn unmeasured_metrics() -> VariantMetrics {
    VariantMetrics {
        rel_error: f64::NAN,
        damping: 0.0,
        lambda: 0.0,
        retries: 0,
        passes: 0,
        free_units: 0,
    }
}

/// A physically pruned block: attention sliced to `attn.kept` query heads (K/V heads kept while
/// read) with `o_proj` = `attn.weight`; the FFN sliced to `ffn.kept` with `down_proj` =
/// `ffn.weight`. An empty kept set removes the branch.
pub fn assemble_block(
    cfg: &ModelConfig,
    dense: &DenseLayer,
    attn: &Variant,
    ffn: &Variant,
) -> Result<Block> {
    check_variant_sizes(dense, attn, ffn)?;
    if !dense.compute.is_packed() {
        return assemble_on_device(cfg, dense, attn, ffn);
    }
    let (h, dh) = (dense.hidden, dense.head_dim);
    let mut w = dense.weights.clone();
    let mut dims = LayerDims {
        n_q: 0,
        n_kv: 0,
        kv_map: vec![],
        d_ff: 0,
    };
    if attn.kept.is_empty() {
        w.attn = None;
    } else {
        let a = dense.attn()?;
        let (q, k, v) = (flat(&a.q_proj)?, flat(&a.k_proj)?, flat(&a.v_proj)?);
        let biases = [&a.q_bias, &a.k_bias, &a.v_bias]
            .map(|b| b.as_ref().map(flat).transpose())
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let o = dense.o_proj()?;
        let s = slice_attention(
            &SliceAttn {
                q: &q,
                k: &k,
                v: &v,
                o: &o,
                q_bias: biases[0].as_deref(),
                k_bias: biases[1].as_deref(),
                v_bias: biases[2].as_deref(),
            },
            &AttnDims {
                hidden: h,
                head_dim: dh,
                n_q: dense.dims.n_q,
                n_kv: dense.dims.n_kv,
            },
            &dense.dims.kv_map,
            &attn.kept,
        )?;
        let (nq, nkv) = (attn.kept.len(), s.kept_kv.len());
        let t = |v: Vec<f32>, r: usize, c: usize| Tensor::from_vec(v, (r, c), &Device::Cpu);
        let tb = |v: Option<Vec<f32>>| v.map(|v| Tensor::new(v, &Device::Cpu)).transpose();
        w.attn = Some(crate::model::AttnWeights {
            q_proj: t(s.q, nq * dh, h)?,
            k_proj: t(s.k, nkv * dh, h)?,
            v_proj: t(s.v, nkv * dh, h)?,
            o_proj: t(attn.weight.clone(), h, nq * dh)?,
            q_bias: tb(s.q_bias)?,
            k_bias: tb(s.k_bias)?,
            v_bias: tb(s.v_bias)?,
            o_bias: a.o_bias.clone(),
        });
        dims.n_q = nq;
        dims.n_kv = nkv;
        dims.kv_map = s.kv_map;
    }
    if ffn.kept.is_empty() {
        w.mlp = None;
    } else {
        let m = dense.mlp()?;
        let (gate, up) = dense.gate_up()?;
        let layout = dense.ffn_layout();
        let f = ffn.kept.len();
        let rows = |v: &[f32]| select_row_units(v, h, layout, &ffn.kept);
        let bias = |b: &Option<Tensor>| -> Result<Option<Tensor>> {
            b.as_ref()
                .map(|b| {
                    let v = select_row_units(&flat(b)?, 1, layout, &ffn.kept)?;
                    Ok(Tensor::new(v, &Device::Cpu)?)
                })
                .transpose()
        };
        w.mlp = Some(crate::model::MlpWeights {
            gate_proj: Tensor::from_vec(rows(&gate)?, (f, h), &Device::Cpu)?,
            up_proj: Tensor::from_vec(rows(&up)?, (f, h), &Device::Cpu)?,
            down_proj: Tensor::from_vec(ffn.weight.clone(), (h, f), &Device::Cpu)?,
            gate_bias: bias(&m.gate_bias)?,
            up_bias: bias(&m.up_bias)?,
            down_bias: m.down_bias.clone(),
        });
        dims.d_ff = f;
    }
    Block::from_weights_on(cfg, dense.layer, dims, w, &dense.compute)
}

/// The variants' kept units are valid for `dense` and their weights have the sliced shapes.
fn check_variant_sizes(dense: &DenseLayer, attn: &Variant, ffn: &Variant) -> Result<()> {
    let (h, dh) = (dense.hidden, dense.head_dim);
    check_kept(&attn.kept, dense.dims.n_q)?;
    check_kept(&ffn.kept, dense.dims.d_ff)?;
    for (what, v, want) in [
        ("attention", attn, h * attn.kept.len() * dh),
        ("FFN", ffn, h * ffn.kept.len()),
    ] {
        if !v.kept.is_empty() && v.weight.len() != want {
            return Err(Error::PruneShape {
                what: format!("layer {} {what} variant weight", dense.layer),
                expected: want.to_string(),
                got: v.weight.len().to_string(),
            });
        }
    }
    Ok(())
}

/// `assemble_block` on a device: the kept rows of q/k/v and gate/up are selected from the layer's
/// `DeviceRows` there; the same values as slicing on the host and converting, since selecting
/// rows and converting the dtype commute.
fn assemble_on_device(
    cfg: &ModelConfig,
    dense: &DenseLayer,
    attn: &Variant,
    ffn: &Variant,
) -> Result<Block> {
    let (h, dh) = (dense.hidden, dense.head_dim);
    let rows = dense.device_rows.get_or_make(|| {
        let c = &dense.compute;
        let a = dense.attn()?;
        let m = dense.mlp()?;
        let opt = |t: &Option<Tensor>| t.as_ref().map(|t| c.place(t)).transpose();
        Ok(DenseRows {
            q: c.place(&a.q_proj)?,
            k: c.place(&a.k_proj)?,
            v: c.place(&a.v_proj)?,
            gate: c.place(&m.gate_proj)?,
            up: c.place(&m.up_proj)?,
            q_bias: opt(&a.q_bias)?,
            k_bias: opt(&a.k_bias)?,
            v_bias: opt(&a.v_bias)?,
            gate_bias: opt(&m.gate_bias)?,
            up_bias: opt(&m.up_bias)?,
        })
    })?;
    let device = dense.compute.candle_device();
    // Row indices of whole units (heads of `dh` rows, or single channels), on the device.
    let unit_rows = |units: &[u32], width: usize| -> Result<Tensor> {
        let idx: Vec<u32> = units
            .iter()
            .flat_map(|&u| u * width as u32..(u + 1) * width as u32)
            .collect();
        let n = idx.len();
        Ok(Tensor::from_vec(idx, n, &device)?)
    };
    let pick = |t: &Tensor, idx: &Tensor| -> Result<Tensor> { Ok(t.index_select(idx, 0)?) };
    let pick_opt = |t: &Option<Tensor>, idx: &Tensor| -> Result<Option<Tensor>> {
        t.as_ref().map(|t| pick(t, idx)).transpose()
    };
    let mut dims = LayerDims {
        n_q: 0,
        n_kv: 0,
        kv_map: vec![],
        d_ff: 0,
    };
    let mut w = BlockWeights {
        input_layernorm: dense.weights.input_layernorm.clone(),
        post_attention_layernorm: dense.weights.post_attention_layernorm.clone(),
        attn: None,
        mlp: None,
    };
    if !attn.kept.is_empty() {
        let a = dense.attn()?;
        let plan = plan_heads(
            &dense.dims.kv_map,
            dense.dims.n_kv,
            &attn.kept,
            HeadOrder::Kept,
        )?;
        let (kept_kv, kv_map): (Vec<u32>, _) = (
            plan.kv_heads.iter().map(|&j| j as u32).collect(),
            plan.kv_map,
        );
        let (qi, kvi) = (unit_rows(&attn.kept, dh)?, unit_rows(&kept_kv, dh)?);
        let nq = attn.kept.len();
        w.attn = Some(crate::model::AttnWeights {
            q_proj: pick(&rows.q, &qi)?,
            k_proj: pick(&rows.k, &kvi)?,
            v_proj: pick(&rows.v, &kvi)?,
            o_proj: Tensor::from_vec(attn.weight.clone(), (h, nq * dh), &Device::Cpu)?,
            q_bias: pick_opt(&rows.q_bias, &qi)?,
            k_bias: pick_opt(&rows.k_bias, &kvi)?,
            v_bias: pick_opt(&rows.v_bias, &kvi)?,
            o_bias: a.o_bias.clone(),
        });
        dims.n_q = nq;
        dims.n_kv = kept_kv.len();
        dims.kv_map = kv_map;
    }
    if !ffn.kept.is_empty() {
        let m = dense.mlp()?;
        let fi = unit_rows(&ffn.kept, 1)?;
        let f = ffn.kept.len();
        w.mlp = Some(crate::model::MlpWeights {
            gate_proj: pick(&rows.gate, &fi)?,
            up_proj: pick(&rows.up, &fi)?,
            down_proj: Tensor::from_vec(ffn.weight.clone(), (h, f), &Device::Cpu)?,
            gate_bias: pick_opt(&rows.gate_bias, &fi)?,
            up_bias: pick_opt(&rows.up_bias, &fi)?,
            down_bias: m.down_bias.clone(),
        });
        dims.d_ff = f;
    }
    Block::from_weights_on(cfg, dense.layer, dims, w, &dense.compute)
}
