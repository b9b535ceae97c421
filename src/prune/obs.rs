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

/// Progressive OBS state of one module. W and Hinv are kept compact: only the rows (and Hinv
/// columns) of channels not yet removed, in ascending channel order, so each removal costs
/// O(|K|²·p) rather than O(d_in²·p). A removed channel's rows are 0 in the paper's full-shape
/// notation; here they are simply dropped.
#[derive(Debug, Clone)]
pub struct ObsState {
    /// Kept channels, ascending; row a of `w`/`hinv` is channel `kept[a]`.
    kept: Vec<usize>,
    /// Position of each channel in `kept`, or `usize::MAX` once removed.
    pos: Vec<usize>,
    w: Mat,
    hinv: Mat,
    /// Shared between clones: it never changes, and it is d_in × d_out.
    g: std::sync::Arc<Mat>,
}

impl ObsState {
    /// Starts from `W = W0` (d_in × d_out) and `Hinv = Hλ⁻¹`; `G = Hλ·W0` stays fixed.
    pub fn new(h_lambda: &Mat, w0: Mat) -> Result<Self, NotPositiveDefinite> {
        let hinv = spd_inverse(h_lambda)?;
        let g = std::sync::Arc::new(matmul(Op::N(h_lambda), Op::N(&w0)));
        let d_in = w0.rows();
        Ok(ObsState {
            kept: (0..d_in).collect(),
            pos: (0..d_in).collect(),
            w: w0,
            hinv,
            g,
        })
    }

    /// Channels not removed yet, ascending.
    pub fn kept_channels(&self) -> &[usize] {
        &self.kept
    }

    /// The compensated weight on the kept channels (|K| × d_out, rows in `kept_channels` order).
    pub fn weight(&self) -> &Mat {
        &self.w
    }

    /// The current inverse Hessian on the kept channels (|K| × |K|).
    pub fn hinv(&self) -> &Mat {
        &self.hinv
    }

    /// `G = Hλ·W0`, full shape (d_in × d_out).
    pub fn g(&self) -> &Mat {
        &self.g
    }

    /// Whether channel `i` has been removed.
    pub fn is_removed(&self, i: usize) -> bool {
        self.pos[i] == usize::MAX
    }

    /// Removes channels P together:
    /// `W −= Hinv[:,P]·Hinv[P,P]⁻¹·W[P,:]`, `Hinv −= Hinv[:,P]·Hinv[P,P]⁻¹·Hinv[P,:]`, then the
    /// rows (and Hinv columns) of P are dropped.
    pub fn remove(&mut self, channels: &[usize]) -> Result<(), NotPositiveDefinite> {
        if channels.is_empty() {
            return Ok(());
        }
        // Channels already removed are skipped.
        let p: Vec<usize> = channels
            .iter()
            .map(|&c| self.pos[c])
            .filter(|&a| a != usize::MAX)
            .collect();
        if p.is_empty() {
            return Ok(());
        }
        let mut leaving = vec![false; self.kept.len()];
        p.iter().for_each(|&a| leaving[a] = true);
        let stay: Vec<usize> = (0..self.kept.len()).filter(|&a| !leaving[a]).collect();
        let h_pp = self.hinv.select(&p, &p);
        let h_ps = self.hinv.select(&p, &stay); // p × |K'|, K' = K \ P
        // Only the staying rows are updated (the leaving ones are dropped), and nothing is
        // changed before the one step that can fail.
        // Hinv[P,P]·X = Hinv[P,K'] gives Xᵀ = Hinv[K',P]·Hinv[P,P]⁻¹ (Hinv is symmetric).
        let m = spd_solve_t(&h_pp, &h_ps)?; // |K'| × p
        let w_p = self.w.select_rows(&p);
        self.w = self.w.select_rows(&stay);
        gemm_into(&mut self.w, 1.0, Op::N(&m), Op::N(&w_p), -1.0);
        self.hinv = self.hinv.select(&stay, &stay);
        gemm_into(&mut self.hinv, 1.0, Op::N(&m), Op::N(&h_ps), -1.0);
        for &a in &p {
            self.pos[self.kept[a]] = usize::MAX;
        }
        self.kept = stay.iter().map(|&a| self.kept[a]).collect();
        for (a, &c) in self.kept.iter().enumerate() {
            self.pos[c] = a;
        }
        Ok(())
    }

    /// Saliency of each unit in `units` (none of them removed; lower = removed first):
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
            if chans.iter().any(|&i| self.is_removed(i)) {
                return Err(NotPositiveDefinite);
            }
            let first = match first_order {
                FirstOrder::Off => 0.0,
                FirstOrder::Signed | FirstOrder::Abs => {
                    let s: f64 = chans
                        .iter()
                        .map(|&i| {
                            self.w
                                .row(self.pos[i])
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
        let p: Vec<usize> = chans.iter().map(|&i| self.pos[i]).collect();
        if let [a] = p[..] {
            let d = self.hinv.get(a, a);
            if d.is_nan() || d <= 0.0 {
                return Err(NotPositiveDefinite);
            }
            return Ok(self.w.row(a).iter().map(|x| x * x).sum::<f64>() / d);
        }
        let l = cholesky(&self.hinv.select(&p, &p))?;
        let wc_t = self.w.select_rows(&p).transpose(); // d_out × |C|
        let yt = solve_x_lt(&l, &wc_t); // (L⁻¹·W_C)ᵀ
        Ok(yt.data().iter().map(|x| x * x).sum())
    }
}

/// The exact least-squares refit `Ŵ_K = Hλ[K,K]⁻¹·G[K,:]`, returned transposed (d_out × |K|,
/// HF layout).
pub fn refit(h_lambda: &Mat, g: &Mat, kept: &[usize]) -> Result<Mat, NotPositiveDefinite> {
    spd_solve_t(&h_lambda.select(kept, kept), &g.select_rows(kept))
}

/// `tr(Eᵀ·Hλ·E) / tr(W0ᵀ·Hλ·W0)` for `E = W0 − pad(Ŵ)`, where `w_hat_t` (d_out × |K|) is the
/// refit `Ŵ_K = Hλ[K,K]⁻¹·G[K,:]` transposed, `kept` its channels and `g = Hλ·W0`; 0 when
/// W0 = 0. Because Hλ[K,K]·Ŵ_K = G[K,:], the numerator is `tr(W0ᵀG) − tr(Ŵ_Kᵀ·G[K,:])`, which
/// costs |K|·d_out. Pass the f64 refit: rounding Ŵ to f32 changes the objective only to second
/// order (the refit is its minimum).
pub fn relative_error(w0: &Mat, g: &Mat, w_hat_t: &Mat, kept: &[usize]) -> f64 {
    let den = w0.frobenius_dot(g);
    if den == 0.0 {
        return 0.0;
    }
    let mut fit = 0.0;
    for j in 0..w_hat_t.rows() {
        let row = w_hat_t.row(j);
        fit += kept
            .iter()
            .zip(row)
            .map(|(&i, w)| w * g.get(i, j))
            .sum::<f64>();
    }
    (den - fit).max(0.0) / den
}
