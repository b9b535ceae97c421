//! The OBS core of local pruning (ALGORITHM.md §5): the state (compensated weight W, inverse
//! Hessian Hinv, fixed G = Hλ·W0), unit saliency, the grouped removal with its OBS weight update
//! and inverse-Hessian downdate, and the exact least-squares refit of a kept set.
//!
//! Layout: `W = weightᵀ` (d_in × d_out), one row per input channel, all in f64.

use serde::{Deserialize, Serialize};

use super::UnitLayout;
use super::linalg::{Mat, NotPositiveDefinite, Op, cholesky, gemm_into, matmul, solve_x_lt};
use super::linalg::{spd_inverse, spd_solve_t};

/// The first-order saliency term (`first-order` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstOrder {
    /// `Σ W∘G`, signed, as in the reference implementation (default).
    Signed,
    /// `|Σ W∘G|`, as printed in the paper.
    Abs,
    /// No first-order term.
    Off,
}

/// Progressive OBS state of one module.
#[derive(Debug, Clone)]
pub struct ObsState {
    w: Mat,
    hinv: Mat,
    g: Mat,
    removed: Vec<bool>,
}

impl ObsState {
    /// Starts from `W = W0` (d_in × d_out) and `Hinv = Hλ⁻¹`; `G = Hλ·W0` stays fixed.
    pub fn new(h_lambda: &Mat, w0: Mat) -> Result<Self, NotPositiveDefinite> {
        let hinv = spd_inverse(h_lambda)?;
        let g = matmul(Op::N(h_lambda), Op::N(&w0));
        let removed = vec![false; w0.rows()];
        Ok(ObsState {
            w: w0,
            hinv,
            g,
            removed,
        })
    }

    /// The compensated weight (d_in × d_out); removed rows are 0.
    pub fn weight(&self) -> &Mat {
        &self.w
    }

    /// The current inverse Hessian; removed rows and columns are 0.
    pub fn hinv(&self) -> &Mat {
        &self.hinv
    }

    /// `G = Hλ·W0`.
    pub fn g(&self) -> &Mat {
        &self.g
    }

    /// Whether channel `i` has been removed.
    pub fn is_removed(&self, i: usize) -> bool {
        self.removed[i]
    }

    /// Removes channels P together:
    /// `W −= Hinv[:,P]·Hinv[P,P]⁻¹·W[P,:]`, `Hinv −= Hinv[:,P]·Hinv[P,P]⁻¹·Hinv[P,:]`, then the
    /// rows (and Hinv columns) of P are set to 0.
    pub fn remove(&mut self, channels: &[usize]) -> Result<(), NotPositiveDefinite> {
        if channels.is_empty() {
            return Ok(());
        }
        let h_pp = self.hinv.select(channels, channels);
        let h_p = self.hinv.select_rows(channels); // p × d_in
        // Hinv[P,P]·X = Hinv[P,:] gives Xᵀ = Hinv[:,P]·Hinv[P,P]⁻¹ (Hinv is symmetric): d_in × p.
        let m = spd_solve_t(&h_pp, &h_p)?;
        let w_p = self.w.select_rows(channels);
        gemm_into(&mut self.w, 1.0, Op::N(&m), Op::N(&w_p), -1.0);
        gemm_into(&mut self.hinv, 1.0, Op::N(&m), Op::N(&h_p), -1.0);
        let n = self.hinv.rows();
        for &c in channels {
            self.w.row_mut(c).iter_mut().for_each(|x| *x = 0.0);
            self.hinv.row_mut(c).iter_mut().for_each(|x| *x = 0.0);
            for i in 0..n {
                self.hinv.set(i, c, 0.0);
            }
            self.removed[c] = true;
        }
        Ok(())
    }

    /// Saliency of each unit in `units` (lower = removed first):
    /// `Σ_{i∈C,j} W_ij·G_ij + ½·tr(W_Cᵀ·Hinv[C,C]⁻¹·W_C)`, which for one channel is
    /// `Σ_j W_ij·G_ij + Σ_j W_ij² / (2·Hinv_ii)`.
    pub fn unit_scores(
        &self,
        layout: &UnitLayout,
        units: &[usize],
        first_order: FirstOrder,
        second_order: bool,
    ) -> Result<Vec<f64>, NotPositiveDefinite> {
        let mut scores = Vec::with_capacity(units.len());
        for &u in units {
            let chans: Vec<usize> = layout.unit_channels(u).collect();
            let first = match first_order {
                FirstOrder::Off => 0.0,
                FirstOrder::Signed | FirstOrder::Abs => {
                    let s: f64 = chans
                        .iter()
                        .map(|&i| {
                            self.w
                                .row(i)
                                .iter()
                                .zip(self.g.row(i))
                                .map(|(w, g)| w * g)
                                .sum::<f64>()
                        })
                        .sum();
                    if first_order == FirstOrder::Abs {
                        s.abs()
                    } else {
                        s
                    }
                }
            };
            let second = if second_order {
                0.5 * self.obs_term(&chans)?
            } else {
                0.0
            };
            let score = first + second;
            if !score.is_finite() {
                return Err(NotPositiveDefinite);
            }
            scores.push(score);
        }
        Ok(scores)
    }

    /// `tr(W_Cᵀ·Hinv[C,C]⁻¹·W_C) = ‖L⁻¹·W_C‖²` with `Hinv[C,C] = L·Lᵀ`.
    fn obs_term(&self, chans: &[usize]) -> Result<f64, NotPositiveDefinite> {
        if let [i] = chans {
            let d = self.hinv.get(*i, *i);
            if d.is_nan() || d <= 0.0 {
                return Err(NotPositiveDefinite);
            }
            return Ok(self.w.row(*i).iter().map(|x| x * x).sum::<f64>() / d);
        }
        let l = cholesky(&self.hinv.select(chans, chans))?;
        let wc_t = self.w.select_rows(chans).transpose(); // d_out × |C|
        let yt = solve_x_lt(&l, &wc_t); // (L⁻¹·W_C)ᵀ
        Ok(yt.data().iter().map(|x| x * x).sum())
    }
}

/// The exact least-squares refit `Ŵ_K = Hλ[K,K]⁻¹·G[K,:]`, returned transposed (d_out × |K|,
/// HF layout).
pub fn refit(h_lambda: &Mat, g: &Mat, kept: &[usize]) -> Result<Mat, NotPositiveDefinite> {
    spd_solve_t(&h_lambda.select(kept, kept), &g.select_rows(kept))
}

/// `tr(Eᵀ·Hλ·E) / tr(W0ᵀ·Hλ·W0)` for `E = W0 − pad(Ŵ)`, where `w_hat_t` (d_out × |K|) holds the
/// kept rows `kept` of Ŵ transposed and `g = Hλ·W0`; 0 when W0 = 0. Expanded as
/// `tr(W0ᵀG) − 2·tr(Ŵ_Kᵀ·G[K,:]) + tr(Ŵ_Kᵀ·Hλ[K,K]·Ŵ_K)`, which costs |K|²·d_out instead of
/// d_in²·d_out; in f64 the cancellation is far below any error worth recording.
pub fn relative_error(h_lambda: &Mat, w0: &Mat, g: &Mat, w_hat_t: &Mat, kept: &[usize]) -> f64 {
    let den = w0.frobenius_dot(g);
    if den == 0.0 {
        return 0.0;
    }
    let w_hat = w_hat_t.transpose(); // |K| × d_out
    let g_k = g.select_rows(kept);
    let h_w = matmul(Op::N(&h_lambda.select(kept, kept)), Op::N(&w_hat));
    let num = den - 2.0 * w_hat.frobenius_dot(&g_k) + w_hat.frobenius_dot(&h_w);
    num.max(0.0) / den
}
