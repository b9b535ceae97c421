//! Slicing dense weights to a kept set of units (ALGORITHM.md §2): query heads with their K/V
//! heads (a K/V head goes only when every query head reading it is gone, and the query→K/V map
//! is rebuilt), FFN channels, and the inverse, padding a compact weight back to full width. All
//! weights are HF layout ([out, in], row-major f32).

use super::UnitLayout;
use crate::{Error, Result};

fn shape_err(what: &str, expected: impl ToString, got: impl ToString) -> Error {
    Error::PruneShape {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// Checks that `kept` is strictly ascending and below `units`.
pub fn check_kept(kept: &[u32], units: usize) -> Result<()> {
    let ok =
        kept.windows(2).all(|w| w[0] < w[1]) && kept.last().is_none_or(|&u| (u as usize) < units);
    if ok {
        Ok(())
    } else {
        Err(shape_err(
            "kept units",
            format!("ascending, unique, < {units}"),
            format!("{kept:?}"),
        ))
    }
}

/// Keeps the row groups of `kept`: [units·width, cols] → [|kept|·width, cols].
pub fn select_row_units(
    w: &[f32],
    cols: usize,
    layout: UnitLayout,
    kept: &[u32],
) -> Result<Vec<f32>> {
    check_kept(kept, layout.units)?;
    if w.len() != layout.channels_total() * cols {
        return Err(shape_err(
            "row-sliced weight length",
            layout.channels_total() * cols,
            w.len(),
        ));
    }
    let mut out = Vec::with_capacity(kept.len() * layout.width * cols);
    for &u in kept {
        let r = layout.unit_channels(u as usize);
        out.extend_from_slice(&w[r.start * cols..r.end * cols]);
    }
    Ok(out)
}

/// Keeps the column groups of `kept`: [rows, units·width] → [rows, |kept|·width].
pub fn select_column_units(
    w: &[f32],
    rows: usize,
    layout: UnitLayout,
    kept: &[u32],
) -> Result<Vec<f32>> {
    check_kept(kept, layout.units)?;
    let d_in = layout.channels_total();
    if w.len() != rows * d_in {
        return Err(shape_err(
            "column-sliced weight length",
            rows * d_in,
            w.len(),
        ));
    }
    let mut out = Vec::with_capacity(rows * kept.len() * layout.width);
    for row in w.chunks_exact(d_in.max(1)).take(rows) {
        for &u in kept {
            out.extend_from_slice(&row[layout.unit_channels(u as usize)]);
        }
    }
    Ok(out)
}

/// The inverse of `select_column_units`: [d_out, |kept|·width] → [d_out, units·width] with zero
/// columns for the removed units.
pub fn pad_columns(
    compact: &[f32],
    kept: &[u32],
    d_out: usize,
    layout: UnitLayout,
) -> Result<Vec<f32>> {
    check_kept(kept, layout.units)?;
    let k = kept.len() * layout.width;
    if compact.len() != d_out * k {
        return Err(shape_err(
            "compact weight length (d_out × kept·width)",
            d_out * k,
            compact.len(),
        ));
    }
    let d_in = layout.channels_total();
    let mut full = vec![0.0f32; d_out * d_in];
    if k == 0 {
        return Ok(full);
    }
    for (row, src) in full.chunks_exact_mut(d_in).zip(compact.chunks_exact(k)) {
        for (slot, &u) in kept.iter().enumerate() {
            let w = layout.width;
            row[layout.unit_channels(u as usize)].copy_from_slice(&src[slot * w..(slot + 1) * w]);
        }
    }
    Ok(full)
}

/// Attention dimensions of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnDims {
    pub hidden: usize,
    pub head_dim: usize,
    pub n_q: usize,
    pub n_kv: usize,
}

/// Dense attention weights (HF layout): q [n_q·d_h, hidden], k/v [n_kv·d_h, hidden],
/// o [hidden, n_q·d_h], optional q/k/v biases.
#[derive(Debug, Clone, Copy)]
pub struct AttnWeights<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub o: &'a [f32],
    pub q_bias: Option<&'a [f32]>,
    pub k_bias: Option<&'a [f32]>,
    pub v_bias: Option<&'a [f32]>,
}

/// Sliced attention: `o` is the dense o_proj sliced (replace it with the refit weight where
/// there is one); `kv_map[i]` is the new K/V index of the i-th kept query head.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedAttn {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    /// Kept K/V heads (old indices), ascending.
    pub kept_kv: Vec<u32>,
    pub kv_map: Vec<usize>,
}

/// The order of a sliced layer's query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOrder {
    /// As kept (ascending dense index), each with its own K/V index: what the search and the
    /// evaluations assemble.
    Kept,
    /// Heads that share a K/V head contiguous (K/V ascending, then query ascending), the layout
    /// GGUF readers and transformers expect: what export writes.
    GroupedByKv,
}

/// Which dense heads a sliced attention keeps, and where they go. A K/V head goes only when
/// every query head reading it is gone. The one place both the search's block assembly and
/// export resolve heads, so they keep the same heads and K/V groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadPlan {
    /// Dense query heads in their new order.
    pub heads: Vec<usize>,
    /// Position of each entry of `heads` in the kept list (its `o_proj` column block in a
    /// variant's compact weight).
    pub blocks: Vec<usize>,
    /// Dense K/V heads kept, ascending.
    pub kv_heads: Vec<usize>,
    /// The new K/V index of each entry of `heads`.
    pub kv_map: Vec<usize>,
}

/// The head plan of keeping query heads `kept` (ascending, checked) of a layer whose query head
/// h reads K/V head `kv_map[h]` of `n_kv`.
pub fn plan_heads(
    kv_map: &[usize],
    n_kv: usize,
    kept: &[u32],
    order: HeadOrder,
) -> Result<HeadPlan> {
    if kv_map.iter().any(|&j| j >= n_kv) {
        return Err(shape_err(
            "kv_map",
            format!("entries < {n_kv}"),
            format!("{kv_map:?}"),
        ));
    }
    check_kept(kept, kv_map.len())?;
    let mut blocks: Vec<usize> = (0..kept.len()).collect();
    if order == HeadOrder::GroupedByKv {
        // Stable: within a group, ascending query index.
        blocks.sort_by_key(|&i| kv_map[kept[i] as usize]);
    }
    let heads: Vec<usize> = blocks.iter().map(|&i| kept[i] as usize).collect();
    let mut used = vec![false; n_kv];
    heads.iter().for_each(|&h| used[kv_map[h]] = true);
    let kv_heads: Vec<usize> = (0..n_kv).filter(|&j| used[j]).collect();
    let mut new_index = vec![0; n_kv];
    kv_heads
        .iter()
        .enumerate()
        .for_each(|(i, &j)| new_index[j] = i);
    let kv_map = heads.iter().map(|&h| new_index[kv_map[h]]).collect();
    Ok(HeadPlan {
        heads,
        blocks,
        kv_heads,
        kv_map,
    })
}

/// Slices attention to `kept_heads` (ascending query-head indices). `kv_map[h]` is the K/V head
/// of query head h. A K/V head is kept while any kept query head reads it.
pub fn slice_attention(
    w: &AttnWeights,
    dims: &AttnDims,
    kv_map: &[usize],
    kept_heads: &[u32],
) -> Result<SlicedAttn> {
    let AttnDims {
        hidden,
        head_dim,
        n_q,
        n_kv,
    } = *dims;
    if kv_map.len() != n_q {
        return Err(shape_err(
            "kv_map",
            format!("{n_q} entries"),
            format!("{kv_map:?}"),
        ));
    }
    let q_units = UnitLayout::heads(n_q, head_dim);
    let kv_units = UnitLayout::heads(n_kv, head_dim);
    let plan = plan_heads(kv_map, n_kv, kept_heads, HeadOrder::Kept)?;
    let kept_kv: Vec<u32> = plan.kv_heads.iter().map(|&j| j as u32).collect();
    let new_map = plan.kv_map;
    let bias = |b: Option<&[f32]>, l: UnitLayout, kept: &[u32]| {
        b.map(|b| select_row_units(b, 1, l, kept)).transpose()
    };
    Ok(SlicedAttn {
        q: select_row_units(w.q, hidden, q_units, kept_heads)?,
        k: select_row_units(w.k, hidden, kv_units, &kept_kv)?,
        v: select_row_units(w.v, hidden, kv_units, &kept_kv)?,
        o: select_column_units(w.o, hidden, q_units, kept_heads)?,
        q_bias: bias(w.q_bias, q_units, kept_heads)?,
        k_bias: bias(w.k_bias, kv_units, &kept_kv)?,
        v_bias: bias(w.v_bias, kv_units, &kept_kv)?,
        kept_kv,
        kv_map: new_map,
    })
}

/// Dense FFN weights (HF layout): gate/up [d_ff, hidden], down [hidden, d_ff].
#[derive(Debug, Clone, Copy)]
pub struct FfnWeights<'a> {
    pub gate: &'a [f32],
    pub up: &'a [f32],
    pub down: &'a [f32],
}

/// Sliced FFN; `down` is the dense down_proj sliced (replace it with the refit weight).
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedFfn {
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// Slices the FFN to the `kept` channels (ascending).
pub fn slice_ffn(w: &FfnWeights, hidden: usize, d_ff: usize, kept: &[u32]) -> Result<SlicedFfn> {
    let l = UnitLayout::channels(d_ff);
    Ok(SlicedFfn {
        gate: select_row_units(w.gate, hidden, l, kept)?,
        up: select_row_units(w.up, hidden, l, kept)?,
        down: select_column_units(w.down, hidden, l, kept)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_plans_keep_the_same_heads_in_either_order() {
        // Uneven groups: heads 0–2 read K/V 0, head 3 K/V 1, head 4 K/V 2.
        let map = [0, 0, 0, 1, 2];
        let p = plan_heads(&map, 3, &[1, 3], HeadOrder::Kept).unwrap();
        assert_eq!(
            (p.heads, p.blocks, p.kv_heads, p.kv_map),
            (vec![1, 3], vec![0, 1], vec![0, 1], vec![0, 1])
        );
        // Interleaved groups: the grouped order moves heads, and the blocks follow them.
        let map = [1, 0, 1, 0];
        let kept = [0, 1, 2, 3];
        let g = plan_heads(&map, 2, &kept, HeadOrder::GroupedByKv).unwrap();
        assert_eq!(
            (&g.heads, &g.blocks, &g.kv_heads, &g.kv_map),
            (
                &vec![1, 3, 0, 2],
                &vec![1, 3, 0, 2],
                &vec![0, 1],
                &vec![0, 0, 1, 1]
            )
        );
        let k = plan_heads(&map, 2, &kept, HeadOrder::Kept).unwrap();
        assert_eq!(
            (&k.heads, &k.kv_map),
            (&vec![0, 1, 2, 3], &vec![1, 0, 1, 0])
        );
        assert_eq!(k.kv_heads, g.kv_heads);
        // A K/V head whose last query head goes, goes.
        let p = plan_heads(&map, 2, &[1, 3], HeadOrder::GroupedByKv).unwrap();
        assert_eq!((p.kv_heads, p.kv_map), (vec![0], vec![0, 0]));
        // Bad input is an error, never a panic.
        assert!(plan_heads(&map, 2, &[3, 1], HeadOrder::Kept).is_err());
        assert!(plan_heads(&map, 2, &[4], HeadOrder::Kept).is_err());
        assert!(plan_heads(&[0, 2], 2, &[0], HeadOrder::Kept).is_err());
    }
}
