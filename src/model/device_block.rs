//! One decoder layer written as candle ops, so it runs on any candle device (cuBLAS matmuls and
//! candle's CUDA kernels on a GPU; candle's CPU ops here) in f32 or bf16. `Block` holds one of
//! these instead of packed weights when it is built for `Compute::Device` (`llama_block.rs`).
//!
//! The arithmetic is the one the packed CPU path does — RMSNorm, fused q|k|v and gate|up
//! projections, rotate-half RoPE (llama3 scaling in the tables), causal softmax attention where
//! each query head reads the K/V head its `kv_map` names (groups may be uneven), SwiGLU, the
//! residual adds — in another order of summation, so the two agree to rounding, not bit for bit.
//! In bf16 the score products run in bf16 and are scaled, masked and softmaxed in f32, as
//! transformers' eager attention does.

use candle_core::{DType, Device, Tensor};

use super::attention::LayerKv;
use super::llama_block::{AttnWeights, BlockTaps, BlockWeights, MlpWeights, fused_bias};
use super::rope::Rope;
use crate::Result;

/// Weights of one block on a device; projections `[out, in]` as stored in HF files.
#[derive(Debug, Clone)]
pub(crate) struct DeviceBlock {
    device: Device,
    dtype: DType,
    ln1: Tensor,
    ln2: Tensor,
    attn: Option<DevAttn>,
    mlp: Option<DevMlp>,
}

#[derive(Debug, Clone)]
struct DevAttn {
    /// `[(n_q + 2·n_kv)·head_dim, hidden]`
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    /// `[hidden, n_q·head_dim]`
    o_proj: Tensor,
    o_bias: Option<Tensor>,
    /// The K/V head of each query head (u32 `[n_q]`), for `index_select`.
    kv_index: Tensor,
}

#[derive(Debug, Clone)]
struct DevMlp {
    /// `[2·d_ff, hidden]`
    gate_up: Tensor,
    gate_up_bias: Option<Tensor>,
    /// `[hidden, d_ff]`
    down_proj: Tensor,
    down_bias: Option<Tensor>,
}

/// The sizes a forward call needs (from the owning `Block`).
pub(crate) struct Geometry<'a> {
    pub n_q: usize,
    pub n_kv: usize,
    pub d_ff: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub rope: &'a Rope,
}

impl DeviceBlock {
    /// Places checked weights (`Block::from_weights_on` validated them against `dims`) on
    /// `device` in `dtype`.
    pub fn new(w: &BlockWeights, kv_map: &[usize], device: &Device, dtype: DType) -> Result<Self> {
        let put = |t: &Tensor| -> Result<Tensor> {
            Ok(t.to_dtype(dtype)?.to_device(device)?.contiguous()?)
        };
        let put_opt =
            |t: Option<Tensor>| -> Result<Option<Tensor>> { t.as_ref().map(put).transpose() };
        let attn = match &w.attn {
            None => None,
            Some(a) => {
                let (q, kv) = (a.q_proj.dim(0)?, a.k_proj.dim(0)?);
                let qkv = Tensor::cat(&[&a.q_proj, &a.k_proj, &a.v_proj], 0)?;
                let bias = fused_bias(&[(&a.q_bias, q), (&a.k_bias, kv), (&a.v_bias, kv)])?;
                let idx: Vec<u32> = kv_map.iter().map(|&j| j as u32).collect();
                Some(DevAttn {
                    qkv: put(&qkv)?,
                    qkv_bias: put_opt(bias)?,
                    o_proj: put(&a.o_proj)?,
                    o_bias: put_opt(a.o_bias.clone())?,
                    kv_index: Tensor::from_vec(idx, kv_map.len(), device)?,
                })
            }
        };
        let mlp = match &w.mlp {
            None => None,
            Some(m) => {
                let f = m.gate_proj.dim(0)?;
                let gate_up = Tensor::cat(&[&m.gate_proj, &m.up_proj], 0)?;
                let bias = fused_bias(&[(&m.gate_bias, f), (&m.up_bias, f)])?;
                Some(DevMlp {
                    gate_up: put(&gate_up)?,
                    gate_up_bias: put_opt(bias)?,
                    down_proj: put(&m.down_proj)?,
                    down_bias: put_opt(m.down_bias.clone())?,
                })
            }
        };
        Ok(DeviceBlock {
            device: device.clone(),
            dtype,
            ln1: put(&w.input_layernorm)?,
            ln2: put(&w.post_attention_layernorm)?,
            attn,
            mlp,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The weights back on the host in f32, HF layout, fused projections split again.
    pub fn weights(&self, g: &Geometry) -> Result<BlockWeights> {
        let host =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?) };
        let dh = g.head_dim;
        let attn = match &self.attn {
            None => None,
            Some(a) => {
                let (q, kv) = (g.n_q * dh, g.n_kv * dh);
                let qkv = host(&a.qkv)?;
                let bias = |off: usize, n: usize| -> Result<Option<Tensor>> {
                    a.qkv_bias
                        .as_ref()
                        .map(|b| host(&b.narrow(0, off, n)?))
                        .transpose()
                };
                Some(AttnWeights {
                    q_proj: qkv.narrow(0, 0, q)?.contiguous()?,
                    k_proj: qkv.narrow(0, q, kv)?.contiguous()?,
                    v_proj: qkv.narrow(0, q + kv, kv)?.contiguous()?,
                    o_proj: host(&a.o_proj)?,
                    q_bias: bias(0, q)?,
                    k_bias: bias(q, kv)?,
                    v_bias: bias(q + kv, kv)?,
                    o_bias: a.o_bias.as_ref().map(host).transpose()?,
                })
            }
        };
        let mlp = match &self.mlp {
            None => None,
            Some(m) => {
                let f = g.d_ff;
                let gu = host(&m.gate_up)?;
                let bias = |off: usize| -> Result<Option<Tensor>> {
                    m.gate_up_bias
                        .as_ref()
                        .map(|b| host(&b.narrow(0, off, f)?))
                        .transpose()
                };
                Some(MlpWeights {
                    gate_proj: gu.narrow(0, 0, f)?.contiguous()?,
                    up_proj: gu.narrow(0, f, f)?.contiguous()?,
                    down_proj: host(&m.down_proj)?,
                    gate_bias: bias(0)?,
                    up_bias: bias(f)?,
                    down_bias: m.down_bias.as_ref().map(host).transpose()?,
                })
            }
        };
        Ok(BlockWeights {
            input_layernorm: host(&self.ln1)?,
            post_attention_layernorm: host(&self.ln2)?,
            attn,
            mlp,
        })
    }

    /// The block on hidden states `[batch, seq, hidden]`, which are moved to this block's
    /// device and dtype first; the output (and the taps) stay there.
    pub fn run(
        &self,
        g: &Geometry,
        x: &Tensor,
        cache: Option<&mut LayerKv>,
        observe: bool,
    ) -> Result<(Tensor, BlockTaps)> {
        let (b, s, h) = x.dims3()?;
        let t = b * s;
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut xs = x.reshape((t, h))?;
        let mut taps = BlockTaps {
            o_proj_input: None,
            down_proj_input: None,
        };
        if let Some(a) = &self.attn {
            let n = candle_nn::ops::rms_norm(&xs, &self.ln1, g.eps)?;
            let qkv = linear(&n, &a.qkv, a.qkv_bias.as_ref())?;
            let y = self.attention(g, a, &qkv, b, s, cache)?;
            let o = linear(&y, &a.o_proj, a.o_bias.as_ref())?;
            xs = (xs + o)?;
            if observe {
                taps.o_proj_input = Some(y.reshape((b, s, ()))?);
            }
        }
        if let Some(m) = &self.mlp {
            let n = candle_nn::ops::rms_norm(&xs, &self.ln2, g.eps)?;
            let gu = linear(&n, &m.gate_up, m.gate_up_bias.as_ref())?;
            let f = g.d_ff;
            let act = (gu.narrow(1, 0, f)?.silu()? * gu.narrow(1, f, f)?)?;
            let o = linear(&act, &m.down_proj, m.down_bias.as_ref())?;
            xs = (xs + o)?;
            if observe {
                taps.down_proj_input = Some(act.reshape((b, s, ()))?);
            }
        }
        Ok((xs.reshape((b, s, h))?, taps))
    }

    /// Causal attention of `s` new positions per batch row after the cached ones; returns the
    /// concatenated head outputs `[b·s, n_q·head_dim]` (the input of `o_proj`).
    fn attention(
        &self,
        g: &Geometry,
        a: &DevAttn,
        qkv: &Tensor,
        b: usize,
        s: usize,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (nq, nkv, dh) = (g.n_q, g.n_kv, g.head_dim);
        let past = cache.as_ref().map_or(0, |c| c.len);
        let heads = |off: usize, n: usize| -> Result<Tensor> {
            // [b·s, n·dh] → [b, n, s, dh]
            Ok(qkv
                .narrow(1, off * dh, n * dh)?
                .reshape((b, s, n, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let tables = g.rope.tables(past, s);
        let half = tables.half;
        let cos = Tensor::from_vec(tables.cos, (s, half), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let sin = Tensor::from_vec(tables.sin, (s, half), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let q = candle_nn::rotary_emb::rope(&heads(0, nq)?, &cos, &sin)?;
        let mut k = candle_nn::rotary_emb::rope(&heads(nq, nkv)?, &cos, &sin)?;
        let mut v = heads(nq + nkv, nkv)?;
        if let Some(c) = cache {
            if let Some((pk, pv)) = &c.device {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            c.device = Some((k.clone(), v.clone()));
            c.len = past + s;
        }
        // Each query head's K/V head, by the layer's map: [b, n_q, kv_len, dh].
        let k = k.index_select(&a.kv_index, 1)?;
        let v = v.index_select(&a.kv_index, 1)?;
        let scale = 1.0 / (dh as f64).sqrt();
        let scores = (q.matmul(&k.t()?)?.to_dtype(DType::F32)? * scale)?;
        let scores = scores.broadcast_add(&causal_mask(s, past, &self.device)?)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
        let y = p.matmul(&v.contiguous()?)?; // [b, n_q, s, dh]
        Ok(y.transpose(1, 2)?.reshape((b * s, nq * dh))?)
    }
}

/// `x [t, in] · wᵀ (+ bias)` for a weight `[out, in]`.
fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `[s, past + s]` f32: 0 where query `i` may see key `j` (`j ≤ past + i`), −∞ elsewhere. Made
/// on the device, so a long sequence's mask is never built on the host and copied over.
fn causal_mask(s: usize, past: usize, device: &Device) -> Result<Tensor> {
    let n = past + s;
    let query = Tensor::arange(past as u32, n as u32, device)?.reshape((s, 1))?;
    let key = Tensor::arange(0u32, n as u32, device)?.reshape((1, n))?;
    let visible = key.broadcast_le(&query)?;
    let zero = Tensor::zeros((s, n), DType::F32, device)?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (s, n), device)?;
    Ok(visible.where_cond(&zero, &hidden)?)
}

/// `t` on the host in f32, whatever device and dtype it is in.
pub fn to_host_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}
