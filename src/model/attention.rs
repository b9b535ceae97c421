//! Grouped-query causal self-attention on the CPU, fused: RoPE, the scaled scores, the causal
//! mask, softmax and the weighted sum of values in one pass over query tiles, with each query
//! head reading its K/V head through the layer's `kv_map` (groups may be uneven). Input is the
//! fused q|k|v projection `[batch·seq, (n_q + 2·n_kv)·head_dim]`; output is the concatenated head
//! outputs `[batch·seq, n_q·head_dim]`, exactly the input of `o_proj`.
//!
//! Only the causal prefix of each tile is computed (the upper triangle beyond the tile is never
//! touched), and no K/V head is copied per query head, which is why this is faster than the
//! candle op chain (repeat_kv, matmul, masked_fill, softmax, matmul). Each K/V head is packed
//! once per call for the `sgemm` kernel and shared by its query heads and tiles.

use rayon::prelude::*;

use super::llama_kernels::masked_softmax;
use super::rope::RopeTables;
use super::sgemm::PackedWeight;

/// Query rows per tile: small enough that a tile's scores stay in cache.
const TILE: usize = 64;

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    /// New positions in this call.
    pub seq: usize,
    pub n_q: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// Rotated keys and values of earlier positions of one layer, per (batch row, K/V head), each
/// `[len, head_dim]` row-major: the KV cache of incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    pub len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// The device path's cache instead (`device_block.rs`): rotated keys and values
    /// `[batch, n_kv, len, head_dim]` on the block's device.
    pub(crate) device: Option<(candle_core::Tensor, candle_core::Tensor)>,
}

/// Causal attention for `sh.seq` new positions following `past.len` cached ones (0 without a
/// cache). `tables` holds RoPE rows for the new positions. When `past` is given it is extended
/// with this call's keys and values.
pub fn causal_attention(
    qkv: &[f32],
    sh: &AttnShape,
    kv_map: &[usize],
    tables: &RopeTables,
    past: Option<&mut LayerKv>,
) -> Vec<f32> {
    let AttnShape {
        batch: b,
        seq: s,
        n_q: nq,
        n_kv: nkv,
        head_dim: dh,
    } = *sh;
    let w = (nq + 2 * nkv) * dh;
    debug_assert_eq!(qkv.len(), b * s * w);
    let past_ref = past.as_deref();
    let past_len = past_ref.map_or(0, |p| p.len);
    let kv_len = past_len + s;

    // Keys (rotated) and values, one contiguous [kv_len, dh] block per (batch row, K/V head).
    let kvs: Vec<(Vec<f32>, Vec<f32>)> = (0..b * nkv)
        .into_par_iter()
        .map(|t| {
            let (bi, j) = (t / nkv, t % nkv);
            let mut k = Vec::with_capacity(kv_len * dh);
            let mut v = Vec::with_capacity(kv_len * dh);
            if let Some(p) = past_ref.filter(|p| p.len > 0) {
                k.extend_from_slice(&p.k[t]);
                v.extend_from_slice(&p.v[t]);
            }
            k.resize(kv_len * dh, 0.0);
            for i in 0..s {
                let row = &qkv[(bi * s + i) * w..(bi * s + i + 1) * w];
                let dst = &mut k[(past_len + i) * dh..(past_len + i + 1) * dh];
                tables.rotate(i, &row[(nq + j) * dh..(nq + j + 1) * dh], dst);
                v.extend_from_slice(&row[(nq + nkv + j) * dh..(nq + nkv + j + 1) * dh]);
            }
            (k, v)
        })
        .collect();

    // Packed once per layer for the products below: keys as the `[positions, dh]` weight of
    // the scores, values as the `[positions, dh]` weight of the output.
    let packed: Vec<(PackedWeight, PackedWeight)> = kvs
        .par_iter()
        .map(|(k, v)| {
            (
                PackedWeight::from_out_in_rows(k, kv_len, dh),
                PackedWeight::from_in_out_rows(v, kv_len, dh),
            )
        })
        .collect();

    let scale = 1.0 / (dh as f32).sqrt();
    let n_tiles = s.div_ceil(TILE);
    // One task per (batch row, query head, query tile); each returns its [m, dh] output block.
    let blocks: Vec<Vec<f32>> = (0..b * nq * n_tiles)
        .into_par_iter()
        .map(|t| {
            let (bh, tile) = (t / n_tiles, t % n_tiles);
            let (bi, h) = (bh / nq, bh % nq);
            let (k, v) = &packed[bi * nkv + kv_map[h]];
            let i0 = tile * TILE;
            let m = TILE.min(s - i0);
            let n = past_len + i0 + m; // keys visible to the tile's last row
            let mut q = vec![0f32; m * dh];
            for r in 0..m {
                let row = &qkv[(bi * s + i0 + r) * w..];
                let q = &mut q[r * dh..(r + 1) * dh];
                tables.rotate(i0 + r, &row[h * dh..(h + 1) * dh], q);
                q.iter_mut().for_each(|x| *x *= scale);
            }
            // The products write every element of their outputs: no zeroing (these buffers are
            // megabytes per layer).
            let mut scores = Vec::with_capacity(m * n);
            k.matmul_prefix_into(&q, (m, dh), n, scores.spare_capacity_mut(), n);
            // SAFETY: the product wrote all m·n scores.
            unsafe { scores.set_len(m * n) };
            for r in 0..m {
                masked_softmax(&mut scores[r * n..(r + 1) * n], past_len + i0 + r + 1);
            }
            let mut out = Vec::with_capacity(m * dh);
            v.matmul_prefix_into(&scores, (m, n), dh, out.spare_capacity_mut(), dh);
            // SAFETY: the product wrote all m·dh outputs.
            unsafe { out.set_len(m * dh) };
            out
        })
        .collect();

    // Row (bi, i) of the output is the heads' rows side by side, from their tiles' blocks.
    let mut y = Vec::with_capacity(b * s * nq * dh);
    for bi in 0..b {
        for i in 0..s {
            let (tile, r) = (i / TILE, i % TILE);
            for h in 0..nq {
                let blk = &blocks[(bi * nq + h) * n_tiles + tile];
                y.extend_from_slice(&blk[r * dh..(r + 1) * dh]);
            }
        }
    }
    if let Some(p) = past {
        let (k, v): (Vec<_>, Vec<_>) = kvs.into_iter().unzip();
        p.k = k;
        p.v = v;
        p.len = kv_len;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward attention for one head: softmax(q·kᵀ/√d + causal mask)·v, no RoPE.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: usize, dh: usize) -> Vec<f32> {
        let mut out = vec![0f32; s * dh];
        for i in 0..s {
            let sc: Vec<f32> = (0..=i)
                .map(|j| {
                    (0..dh).map(|d| q[i * dh + d] * k[j * dh + d]).sum::<f32>() / (dh as f32).sqrt()
                })
                .collect();
            let mx = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = sc.iter().map(|x| (x - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            for j in 0..=i {
                for d in 0..dh {
                    out[i * dh + d] += e[j] / z * v[j * dh + d];
                }
            }
        }
        out
    }

    fn identity_tables(s: usize, dh: usize) -> RopeTables {
        RopeTables {
            offset: 0,
            len: s,
            half: dh / 2,
            cos: vec![1.0; s * dh / 2],
            sin: vec![0.0; s * dh / 2],
        }
    }

    #[test]
    fn uneven_groups_read_their_mapped_kv_head() {
        // 3 query heads, 2 K/V heads, map [1, 1, 0]; seq 70 spans two tiles.
        let (s, dh, nq, nkv) = (70, 4, 3, 2);
        let w = (nq + 2 * nkv) * dh;
        let qkv: Vec<f32> = (0..s * w)
            .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let sh = AttnShape {
            batch: 1,
            seq: s,
            n_q: nq,
            n_kv: nkv,
            head_dim: dh,
        };
        let map = [1, 1, 0];
        let y = causal_attention(&qkv, &sh, &map, &identity_tables(s, dh), None);
        let col = |off: usize| -> Vec<f32> {
            (0..s)
                .flat_map(|i| qkv[i * w + off..i * w + off + dh].to_vec())
                .collect()
        };
        for (h, &j) in map.iter().enumerate() {
            let want = naive(
                &col(h * dh),
                &col((nq + j) * dh),
                &col((nq + nkv + j) * dh),
                s,
                dh,
            );
            for i in 0..s {
                for d in 0..dh {
                    let got = y[i * nq * dh + h * dh + d];
                    assert!((got - want[i * dh + d]).abs() < 1e-5, "head {h} pos {i}");
                }
            }
        }
    }

    #[test]
    fn cached_decoding_matches_one_full_pass() {
        let (s, dh, nq, nkv) = (9, 4, 2, 1);
        let w = (nq + 2 * nkv) * dh;
        let qkv: Vec<f32> = (0..s * w)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let tables = identity_tables(s, dh);
        let full = causal_attention(
            &qkv,
            &AttnShape {
                batch: 1,
                seq: s,
                n_q: nq,
                n_kv: nkv,
                head_dim: dh,
            },
            &[0, 0],
            &tables,
            None,
        );
        let mut kv = LayerKv::default();
        let first = AttnShape {
            batch: 1,
            seq: 5,
            n_q: nq,
            n_kv: nkv,
            head_dim: dh,
        };
        let a = causal_attention(
            &qkv[..5 * w],
            &first,
            &[0, 0],
            &identity_tables(5, dh),
            Some(&mut kv),
        );
        let rest = AttnShape { seq: 4, ..first };
        let b = causal_attention(
            &qkv[5 * w..],
            &rest,
            &[0, 0],
            &identity_tables(4, dh),
            Some(&mut kv),
        );
        let joined: Vec<f32> = a.into_iter().chain(b).collect();
        for (x, y) in full.iter().zip(&joined) {
            assert!((x - y).abs() < 1e-6);
        }
        assert_eq!(kv.len, 9);
    }
}
