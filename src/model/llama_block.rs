//! One decoder layer (block) with its own widths: weights in HF layout, shape checks against the
//! config, and the forward pass with optional taps on the inputs of `o_proj` and `down_proj`.
//! A block is built either from a `TensorSource` (one layer at a time, so a 70B model never has
//! to fit in memory) or from explicit weights (a pruning stage that slices heads or channels, or
//! refits `o_proj`/`down_proj`).

use candle_core::Tensor;

use super::attention::{AttnShape, LayerKv, causal_attention};
use super::compute::Compute;
use super::device_block::{DeviceBlock, Geometry};
use super::llama_kernels::{swiglu, tensor_from, with_f32};
use super::rope::Rope;
use super::sgemm::PackedWeight;
use super::source::read_checked;
use super::{LayerDims, ModelConfig, TensorSource};
use crate::{Error, Result};

/// Attention weights of one layer, HF layout (`[out, in]`).
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[n_q·head_dim, hidden]`
    pub q_proj: Tensor,
    /// `[n_kv·head_dim, hidden]`
    pub k_proj: Tensor,
    /// `[n_kv·head_dim, hidden]`
    pub v_proj: Tensor,
    /// `[hidden, n_q·head_dim]`
    pub o_proj: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub o_bias: Option<Tensor>,
}

/// SwiGLU FFN weights of one layer, HF layout.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// `[d_ff, hidden]`
    pub gate_proj: Tensor,
    /// `[d_ff, hidden]`
    pub up_proj: Tensor,
    /// `[hidden, d_ff]`
    pub down_proj: Tensor,
    pub gate_bias: Option<Tensor>,
    pub up_bias: Option<Tensor>,
    pub down_bias: Option<Tensor>,
}

/// All weights of one decoder layer. `attn` is `None` exactly when the layer has no query heads,
/// `mlp` is `None` exactly when `d_ff == 0`.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// `[hidden]`
    pub input_layernorm: Tensor,
    /// `[hidden]`
    pub post_attention_layernorm: Tensor,
    pub attn: Option<AttnWeights>,
    pub mlp: Option<MlpWeights>,
}

/// What `Block::forward_observed` saw inside the block, each `[batch, seq, width]`; `None` for a
/// removed branch.
#[derive(Debug, Clone)]
pub struct BlockTaps {
    /// Input of `o_proj`: the concatenated head outputs, width `n_q·head_dim`.
    pub o_proj_input: Option<Tensor>,
    /// Input of `down_proj`: `silu(gate(x)) · up(x)`, width `d_ff`.
    pub down_proj_input: Option<Tensor>,
}

/// A decoder layer ready to run. Q/K/V and gate/up are stored fused (one matmul each), packed
/// for the CPU kernels or as candle tensors on a device (`Compute`).
#[derive(Debug, Clone)]
pub struct Block {
    dims: LayerDims,
    hidden: usize,
    head_dim: usize,
    eps: f32,
    rope: Rope,
    exec: Exec,
}

/// The weights in the form the chosen compute path runs.
#[derive(Debug, Clone)]
enum Exec {
    Packed {
        ln1: Tensor,
        ln2: Tensor,
        attn: Option<FusedAttn>,
        mlp: Option<FusedMlp>,
    },
    Device(DeviceBlock),
}

/// Projection weights are stored packed for `sgemm` (the layout its kernel reads).
#[derive(Debug, Clone)]
struct FusedAttn {
    qkv: PackedWeight,
    qkv_bias: Option<Tensor>,
    o_proj: PackedWeight,
    o_bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct FusedMlp {
    gate_up: PackedWeight,
    gate_up_bias: Option<Tensor>,
    down_proj: PackedWeight,
    down_bias: Option<Tensor>,
}

/// Reads an optional bias: absent is fine, present must have the right shape.
fn read_opt(src: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
    if src.contains(name) {
        read_checked(src, name, shape).map(Some)
    } else {
        Ok(None)
    }
}

impl BlockWeights {
    /// Reads layer `l` from `src` under its HF names, with the shapes `dims` implies.
    pub fn load(
        cfg: &ModelConfig,
        l: usize,
        dims: &LayerDims,
        src: &dyn TensorSource,
    ) -> Result<Self> {
        let (h, dh) = (cfg.hidden_size, cfg.head_dim);
        let p = format!("model.layers.{l}");
        let attn = if dims.n_q > 0 {
            let (q, kv) = (dims.n_q * dh, dims.n_kv * dh);
            let a = format!("{p}.self_attn");
            Some(AttnWeights {
                q_proj: read_checked(src, &format!("{a}.q_proj.weight"), &[q, h])?,
                k_proj: read_checked(src, &format!("{a}.k_proj.weight"), &[kv, h])?,
                v_proj: read_checked(src, &format!("{a}.v_proj.weight"), &[kv, h])?,
                o_proj: read_checked(src, &format!("{a}.o_proj.weight"), &[h, q])?,
                q_bias: read_opt(src, &format!("{a}.q_proj.bias"), &[q])?,
                k_bias: read_opt(src, &format!("{a}.k_proj.bias"), &[kv])?,
                v_bias: read_opt(src, &format!("{a}.v_proj.bias"), &[kv])?,
                o_bias: read_opt(src, &format!("{a}.o_proj.bias"), &[h])?,
            })
        } else {
            None
        };
        let mlp = if dims.d_ff > 0 {
            let (f, m) = (dims.d_ff, format!("{p}.mlp"));
            Some(MlpWeights {
                gate_proj: read_checked(src, &format!("{m}.gate_proj.weight"), &[f, h])?,
                up_proj: read_checked(src, &format!("{m}.up_proj.weight"), &[f, h])?,
                down_proj: read_checked(src, &format!("{m}.down_proj.weight"), &[h, f])?,
                gate_bias: read_opt(src, &format!("{m}.gate_proj.bias"), &[f])?,
                up_bias: read_opt(src, &format!("{m}.up_proj.bias"), &[f])?,
                down_bias: read_opt(src, &format!("{m}.down_proj.bias"), &[h])?,
            })
        } else {
            None
        };
        Ok(BlockWeights {
            input_layernorm: read_checked(src, &format!("{p}.input_layernorm.weight"), &[h])?,
            post_attention_layernorm: read_checked(
                src,
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
            )?,
            attn,
            mlp,
        })
    }

    /// Layer `l` of `cfg`: its dims (checked) and its weights read from `src` with the shapes they
    /// imply, as host tensors — without building a block (nothing packed).
    pub fn load_layer(
        cfg: &ModelConfig,
        l: usize,
        src: &dyn TensorSource,
    ) -> Result<(LayerDims, Self)> {
        let dims = cfg.layers.get(l).ok_or_else(|| Error::LayerDims {
            layer: l,
            msg: format!("the model has {} layers", cfg.n_layers()),
        })?;
        validate_dims(l, dims)?;
        Ok((dims.clone(), Self::load(cfg, l, dims, src)?))
    }

    /// Every tensor with its HF name for layer `l`, in a fixed order (norms, attention, FFN).
    pub fn named_tensors(&self, l: usize) -> Vec<(String, Tensor)> {
        let p = format!("model.layers.{l}");
        let mut v = vec![
            (
                format!("{p}.input_layernorm.weight"),
                self.input_layernorm.clone(),
            ),
            (
                format!("{p}.post_attention_layernorm.weight"),
                self.post_attention_layernorm.clone(),
            ),
        ];
        let mut opt = |name: String, t: &Option<Tensor>| {
            if let Some(t) = t {
                v.push((name, t.clone()));
            }
        };
        if let Some(a) = &self.attn {
            let s = format!("{p}.self_attn");
            opt(format!("{s}.q_proj.weight"), &Some(a.q_proj.clone()));
            opt(format!("{s}.k_proj.weight"), &Some(a.k_proj.clone()));
            opt(format!("{s}.v_proj.weight"), &Some(a.v_proj.clone()));
            opt(format!("{s}.o_proj.weight"), &Some(a.o_proj.clone()));
            opt(format!("{s}.q_proj.bias"), &a.q_bias);
            opt(format!("{s}.k_proj.bias"), &a.k_bias);
            opt(format!("{s}.v_proj.bias"), &a.v_bias);
            opt(format!("{s}.o_proj.bias"), &a.o_bias);
        }
        if let Some(m) = &self.mlp {
            let s = format!("{p}.mlp");
            opt(format!("{s}.gate_proj.weight"), &Some(m.gate_proj.clone()));
            opt(format!("{s}.up_proj.weight"), &Some(m.up_proj.clone()));
            opt(format!("{s}.down_proj.weight"), &Some(m.down_proj.clone()));
            opt(format!("{s}.gate_proj.bias"), &m.gate_bias);
            opt(format!("{s}.up_proj.bias"), &m.up_bias);
            opt(format!("{s}.down_proj.bias"), &m.down_bias);
        }
        v
    }
}

/// Checks a tensor handed to `Block::from_weights`.
fn check(layer: usize, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dims() != shape {
        return Err(Error::LayerDims {
            layer,
            msg: format!("`{what}` has shape {:?}, expected {shape:?}", t.dims()),
        });
    }
    Ok(())
}

fn check_opt(layer: usize, what: &str, t: &Option<Tensor>, shape: &[usize]) -> Result<()> {
    t.as_ref().map_or(Ok(()), |t| check(layer, what, t, shape))
}

/// Validates `dims` on its own: map length, K/V indices, and a removed attention having no K/V.
pub fn validate_dims(layer: usize, dims: &LayerDims) -> Result<()> {
    let bad = |msg: String| Err(Error::LayerDims { layer, msg });
    if dims.kv_map.len() != dims.n_q {
        return bad(format!(
            "kv_map has {} entries for {} query heads",
            dims.kv_map.len(),
            dims.n_q
        ));
    }
    if dims.n_q > 0 && dims.n_kv == 0 {
        return bad(format!("{} query heads but no K/V head", dims.n_q));
    }
    if let Some(&j) = dims.kv_map.iter().find(|&&j| j >= dims.n_kv) {
        return bad(format!("kv_map names K/V head {j} of {}", dims.n_kv));
    }
    Ok(())
}

/// Checks every weight of `w` against `dims` (hidden size `h`, head size `dh`), including that
/// a removed branch has no weights and a present one has all of them.
fn check_weights(
    layer: usize,
    dims: &LayerDims,
    h: usize,
    dh: usize,
    w: &BlockWeights,
) -> Result<()> {
    check(layer, "input_layernorm", &w.input_layernorm, &[h])?;
    check(
        layer,
        "post_attention_layernorm",
        &w.post_attention_layernorm,
        &[h],
    )?;
    let err = |msg: &str| {
        Err(Error::LayerDims {
            layer,
            msg: msg.into(),
        })
    };
    match (dims.n_q, &w.attn) {
        (0, None) => {}
        (0, Some(_)) => return err("attention weights given for a removed attention"),
        (_, None) => return err("attention weights missing"),
        (nq, Some(a)) => {
            let (q, kv) = (nq * dh, dims.n_kv * dh);
            check(layer, "q_proj", &a.q_proj, &[q, h])?;
            check(layer, "k_proj", &a.k_proj, &[kv, h])?;
            check(layer, "v_proj", &a.v_proj, &[kv, h])?;
            check(layer, "o_proj", &a.o_proj, &[h, q])?;
            check_opt(layer, "q_proj.bias", &a.q_bias, &[q])?;
            check_opt(layer, "k_proj.bias", &a.k_bias, &[kv])?;
            check_opt(layer, "v_proj.bias", &a.v_bias, &[kv])?;
            check_opt(layer, "o_proj.bias", &a.o_bias, &[h])?;
        }
    }
    match (dims.d_ff, &w.mlp) {
        (0, None) => {}
        (0, Some(_)) => return err("FFN weights given for a removed FFN"),
        (_, None) => return err("FFN weights missing"),
        (f, Some(m)) => {
            check(layer, "gate_proj", &m.gate_proj, &[f, h])?;
            check(layer, "up_proj", &m.up_proj, &[f, h])?;
            check(layer, "down_proj", &m.down_proj, &[h, f])?;
            check_opt(layer, "gate_proj.bias", &m.gate_bias, &[f])?;
            check_opt(layer, "up_proj.bias", &m.up_bias, &[f])?;
            check_opt(layer, "down_proj.bias", &m.down_bias, &[h])?;
        }
    }
    Ok(())
}

/// Concatenates optional biases along their axis, zeros where one is missing; `None` when all
/// are.
pub(super) fn fused_bias(parts: &[(&Option<Tensor>, usize)]) -> Result<Option<Tensor>> {
    // Zeros where a bias is missing, on the device and in the dtype of those present.
    let Some(like) = parts.iter().find_map(|(b, _)| b.as_ref()) else {
        return Ok(None);
    };
    let ts = parts
        .iter()
        .map(|(b, n)| match b {
            Some(t) => Ok(t.clone()),
            None => Ok(Tensor::zeros(*n, like.dtype(), like.device())?),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&ts, 0)?))
}

/// Checked weights packed for the CPU kernels.
fn pack(w: BlockWeights, d_ff: usize) -> Result<Exec> {
    let attn = match w.attn {
        None => None,
        Some(a) => {
            let (q, kv) = (a.q_proj.dim(0)?, a.k_proj.dim(0)?);
            Some(FusedAttn {
                qkv: PackedWeight::from_out_in(&[&a.q_proj, &a.k_proj, &a.v_proj])?,
                qkv_bias: fused_bias(&[(&a.q_bias, q), (&a.k_bias, kv), (&a.v_bias, kv)])?,
                o_proj: PackedWeight::from_out_in(&[&a.o_proj])?,
                o_bias: a.o_bias,
            })
        }
    };
    let mlp = match w.mlp {
        None => None,
        Some(m) => Some(FusedMlp {
            gate_up: PackedWeight::from_out_in(&[&m.gate_proj, &m.up_proj])?,
            gate_up_bias: fused_bias(&[(&m.gate_bias, d_ff), (&m.up_bias, d_ff)])?,
            down_proj: PackedWeight::from_out_in(&[&m.down_proj])?,
            down_bias: m.down_bias,
        }),
    };
    Ok(Exec::Packed {
        ln1: w.input_layernorm.contiguous()?,
        ln2: w.post_attention_layernorm.contiguous()?,
        attn,
        mlp,
    })
}

impl Block {
    /// Reads and builds layer `l` of `cfg` from `src` for the packed CPU path.
    pub fn load(cfg: &ModelConfig, l: usize, src: &dyn TensorSource) -> Result<Self> {
        Self::load_on(cfg, l, src, &Compute::Packed)
    }

    /// Reads and builds layer `l` of `cfg` from `src` for `compute`.
    pub fn load_on(
        cfg: &ModelConfig,
        l: usize,
        src: &dyn TensorSource,
        compute: &Compute,
    ) -> Result<Self> {
        let (dims, w) = BlockWeights::load_layer(cfg, l, src)?;
        Self::from_weights_on(cfg, l, dims, w, compute)
    }

    /// Builds a block with widths `dims` from explicit weights; `cfg` supplies hidden size,
    /// head size, norm epsilon and RoPE, `layer` is only used in error messages.
    pub fn from_weights(
        cfg: &ModelConfig,
        layer: usize,
        dims: LayerDims,
        w: BlockWeights,
    ) -> Result<Self> {
        Self::from_weights_on(cfg, layer, dims, w, &Compute::Packed)
    }

    /// Like `from_weights`, for `compute`.
    pub fn from_weights_on(
        cfg: &ModelConfig,
        layer: usize,
        dims: LayerDims,
        w: BlockWeights,
        compute: &Compute,
    ) -> Result<Self> {
        validate_dims(layer, &dims)?;
        let (h, dh) = (cfg.hidden_size, cfg.head_dim);
        check_weights(layer, &dims, h, dh, &w)?;
        let exec = match compute {
            Compute::Packed => pack(w, dims.d_ff)?,
            Compute::Device { device, dtype } => {
                Exec::Device(DeviceBlock::new(&w, &dims.kv_map, device, *dtype)?)
            }
        };
        Ok(Block {
            dims,
            hidden: h,
            head_dim: dh,
            eps: cfg.rms_norm_eps as f32,
            rope: Rope::new(cfg),
            exec,
        })
    }

    pub fn dims(&self) -> &LayerDims {
        &self.dims
    }

    /// The block's weights in HF layout (`[out, in]`, unpacked copies of the stored weights).
    pub fn weights(&self) -> Result<BlockWeights> {
        let (ln1, ln2, attn, mlp) = match &self.exec {
            Exec::Device(d) => return d.weights(&self.geometry()),
            Exec::Packed {
                ln1,
                ln2,
                attn,
                mlp,
            } => (ln1, ln2, attn, mlp),
        };
        let dh = self.head_dim;
        let attn = match attn {
            None => None,
            Some(a) => {
                let (q, kv) = (self.dims.n_q * dh, self.dims.n_kv * dh);
                let bias = |off: usize, n: usize| -> Result<Option<Tensor>> {
                    Ok(match &a.qkv_bias {
                        Some(b) => Some(b.narrow(0, off, n)?),
                        None => None,
                    })
                };
                Some(AttnWeights {
                    q_proj: a.qkv.out_in(0, q)?,
                    k_proj: a.qkv.out_in(q, kv)?,
                    v_proj: a.qkv.out_in(q + kv, kv)?,
                    o_proj: a.o_proj.out_in(0, a.o_proj.out_dim())?,
                    q_bias: bias(0, q)?,
                    k_bias: bias(q, kv)?,
                    v_bias: bias(q + kv, kv)?,
                    o_bias: a.o_bias.clone(),
                })
            }
        };
        let mlp = match mlp {
            None => None,
            Some(m) => {
                let f = self.dims.d_ff;
                let bias = |off: usize| -> Result<Option<Tensor>> {
                    Ok(match &m.gate_up_bias {
                        Some(b) => Some(b.narrow(0, off, f)?),
                        None => None,
                    })
                };
                Some(MlpWeights {
                    gate_proj: m.gate_up.out_in(0, f)?,
                    up_proj: m.gate_up.out_in(f, f)?,
                    down_proj: m.down_proj.out_in(0, m.down_proj.out_dim())?,
                    gate_bias: bias(0)?,
                    up_bias: bias(f)?,
                    down_bias: m.down_bias.clone(),
                })
            }
        };
        Ok(BlockWeights {
            input_layernorm: ln1.clone(),
            post_attention_layernorm: ln2.clone(),
            attn,
            mlp,
        })
    }

    /// The device and dtype this block runs on (`Device::Cpu`/f32 for the packed path).
    pub fn placement(&self) -> (candle_core::Device, candle_core::DType) {
        match &self.exec {
            Exec::Device(d) => (d.device().clone(), d.dtype()),
            Exec::Packed { .. } => (candle_core::Device::Cpu, candle_core::DType::F32),
        }
    }

    fn geometry(&self) -> Geometry<'_> {
        Geometry {
            n_q: self.dims.n_q,
            n_kv: self.dims.n_kv,
            d_ff: self.dims.d_ff,
            head_dim: self.head_dim,
            eps: self.eps,
            rope: &self.rope,
        }
    }

    /// Runs the block on hidden states `[batch, seq, hidden]` (positions from 0).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.run(x, None, false)?.0)
    }

    /// Like `forward`, and also returns the inputs of `o_proj` and `down_proj`.
    pub fn forward_observed(&self, x: &Tensor) -> Result<(Tensor, BlockTaps)> {
        self.run(x, None, true)
    }

    /// Runs the block on new positions that follow the ones already in `cache`, extending it.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut LayerKv) -> Result<Tensor> {
        Ok(self.run(x, Some(cache), false)?.0)
    }

    fn run(
        &self,
        x: &Tensor,
        cache: Option<&mut LayerKv>,
        observe: bool,
    ) -> Result<(Tensor, BlockTaps)> {
        let (b, s, h) = x.dims3()?;
        if h != self.hidden {
            return Err(Error::msg(format!(
                "block input has width {h}, the model's hidden size is {}",
                self.hidden
            )));
        }
        let (ln1, ln2, attn, mlp) = match &self.exec {
            Exec::Device(d) => return d.run(&self.geometry(), x, cache, observe),
            Exec::Packed {
                ln1,
                ln2,
                attn,
                mlp,
            } => (ln1, ln2, attn, mlp),
        };
        let t = b * s;
        // [b, s, h] → [b·s, h]: every projection is then one plain matmul.
        let mut xs = x.reshape((t, h))?;
        let mut taps = BlockTaps {
            o_proj_input: None,
            down_proj_input: None,
        };
        if let Some(a) = attn {
            let n = candle_nn::ops::rms_norm(&xs, ln1, self.eps)?;
            let mut qkv = a.qkv.apply(&n)?;
            if let Some(bias) = &a.qkv_bias {
                qkv = qkv.broadcast_add(bias)?;
            }
            let d = &self.dims;
            let sh = AttnShape {
                batch: b,
                seq: s,
                n_q: d.n_q,
                n_kv: d.n_kv,
                head_dim: self.head_dim,
            };
            let offset = cache.as_ref().map_or(0, |c| c.len);
            let tables = self.rope.tables(offset, s);
            let y = with_f32(&qkv, |q| {
                causal_attention(q, &sh, &d.kv_map, &tables, cache)
            })?;
            let y = tensor_from(y, (t, d.n_q * self.head_dim))?;
            let mut o = a.o_proj.apply(&y)?;
            if let Some(bias) = &a.o_bias {
                o = o.broadcast_add(bias)?;
            }
            xs = (xs + o)?;
            if observe {
                taps.o_proj_input = Some(y.reshape((b, s, ()))?);
            }
        }
        if let Some(m) = mlp {
            let n = candle_nn::ops::rms_norm(&xs, ln2, self.eps)?;
            let mut gu = m.gate_up.apply(&n)?;
            if let Some(bias) = &m.gate_up_bias {
                gu = gu.broadcast_add(bias)?;
            }
            let f = self.dims.d_ff;
            let act = tensor_from(with_f32(&gu, |g| swiglu(g, f))?, (t, f))?;
            let mut o = m.down_proj.apply(&act)?;
            if let Some(bias) = &m.down_bias {
                o = o.broadcast_add(bias)?;
            }
            xs = (xs + o)?;
            if observe {
                taps.down_proj_input = Some(act.reshape((b, s, ()))?);
            }
        }
        Ok((xs.reshape((b, s, h))?, taps))
    }
}
