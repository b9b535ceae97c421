//! Fitness (ALGORITHM.md §8): KL(teacher ‖ student) of next-token distributions, lower is better.
//! The default restricts both distributions to the teacher's top-k ids T_p at each position,
//! `log p(v) = z(v) − logsumexp_{u∈T_p} z(u)` in f32; `full-kl` uses all V tokens. The fitness of
//! a minibatch is the mean over every position except the last of each piece.
//!
//! The teacher's top-k (ids + logit values, ties to the lower id) is extracted once per pool and
//! checkpointed as [`TeacherTopK`]. The KL itself runs as candle ops (gather + log-softmax) on the
//! student's `[positions, V]` logits; [`reference`] is a plain-slice version for tests.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which divergence the search minimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FitnessKind {
    /// KL over the teacher's top-k ids (the paper).
    #[default]
    #[serde(rename = "top-k-kl")]
    TopKKl,
    /// KL over the whole vocabulary.
    #[serde(rename = "full-kl")]
    FullKl,
}

/// Teacher top-k ids, u16 when the vocabulary has at most 65,536 tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopKIds {
    U16(#[serde(with = "le_bytes")] Vec<u16>),
    U32(#[serde(with = "le_bytes")] Vec<u32>),
}

/// The teacher's top-k logits for consecutive positions (rows), row-major `[rows, k]`, each row
/// sorted by value descending, ties to the lower id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherTopK {
    k: usize,
    vocab: usize,
    ids: TopKIds,
    #[serde(with = "le_bytes")]
    values: Vec<f32>,
}

impl TeacherTopK {
    /// An empty record; `k` is clamped to the vocabulary (k ≥ V is the full distribution).
    pub fn new(k: usize, vocab: usize) -> Result<Self> {
        if k == 0 || vocab == 0 {
            return Err(Error::Fitness {
                reason: format!("top-k needs k ≥ 1 and a vocabulary (k = {k}, V = {vocab})"),
            });
        }
        let ids = if vocab <= 1 << 16 {
            TopKIds::U16(Vec::new())
        } else {
            TopKIds::U32(Vec::new())
        };
        Ok(TeacherTopK {
            k: k.min(vocab),
            vocab,
            ids,
            values: Vec::new(),
        })
    }

    /// The top-k of every row of `logits` (`[positions, V]`).
    pub fn from_logits(logits: &Tensor, k: usize) -> Result<Self> {
        let (_, vocab) = logits.dims2()?;
        let mut t = TeacherTopK::new(k, vocab)?;
        t.push_logits(logits)?;
        Ok(t)
    }

    /// Appends the top-k of every row of `logits` (`[positions, V]`).
    ///
    /// The selection runs on the host: candle has no top-k, and a full arg-sort is O(V log V)
    /// per row (and limited in width on some devices), while `select_nth` is O(V).
    pub fn push_logits(&mut self, logits: &Tensor) -> Result<()> {
        let (rows, vocab) = logits.dims2()?;
        if vocab != self.vocab {
            return Err(Error::Fitness {
                reason: format!(
                    "logits have {vocab} columns, the teacher record {}",
                    self.vocab
                ),
            });
        }
        let flat: Vec<f32> = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        // Rows are independent: split them over the cores, then concatenate in row order, so
        // the result does not depend on the thread count.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk_rows = rows.div_ceil(threads).max(1);
        let k = self.k;
        let parts: Vec<Vec<u32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = flat
                .chunks(chunk_rows * vocab)
                .map(|chunk| scope.spawn(move || top_k_rows(chunk, vocab, k)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for (chunk, top) in flat.chunks(chunk_rows * vocab).zip(&parts) {
            for (row, ids) in chunk.chunks(vocab).zip(top.chunks(k)) {
                self.values.extend(ids.iter().map(|&i| row[i as usize]));
            }
            match &mut self.ids {
                TopKIds::U16(v) => v.extend(top.iter().map(|&i| i as u16)),
                TopKIds::U32(v) => v.extend_from_slice(top),
            }
        }
        Ok(())
    }

    /// Appends another record's rows (e.g. pieces extracted separately, in pool order).
    pub fn append(&mut self, other: &TeacherTopK) -> Result<()> {
        if (other.k, other.vocab) != (self.k, self.vocab) {
            return Err(Error::Fitness {
                reason: format!(
                    "appending a teacher record with k = {}, V = {} to one with k = {}, V = {}",
                    other.k, other.vocab, self.k, self.vocab
                ),
            });
        }
        match (&mut self.ids, &other.ids) {
            (TopKIds::U16(a), TopKIds::U16(b)) => a.extend_from_slice(b),
            (TopKIds::U32(a), TopKIds::U32(b)) => a.extend_from_slice(b),
            // Only a record decoded from a damaged checkpoint can get here.
            _ => {
                return Err(Error::Fitness {
                    reason: "teacher records with equal V but different id widths".into(),
                });
            }
        }
        self.values.extend_from_slice(&other.values);
        Ok(())
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.k
    }

    pub fn ids(&self) -> &TopKIds {
        &self.ids
    }

    /// Rows `start..start + len` as a record of their own.
    pub fn slice(&self, start: usize, len: usize) -> Result<TeacherTopK> {
        let range = self.row_range(start, len)?;
        let ids = match &self.ids {
            TopKIds::U16(v) => TopKIds::U16(v[range.clone()].to_vec()),
            TopKIds::U32(v) => TopKIds::U32(v[range.clone()].to_vec()),
        };
        Ok(TeacherTopK {
            k: self.k,
            vocab: self.vocab,
            ids,
            values: self.values[range].to_vec(),
        })
    }

    /// Row-major `[rows, k]` teacher logits.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The ids of rows `start..start + len`, widened to u32, row-major.
    pub fn ids_u32(&self, start: usize, len: usize) -> Result<Vec<u32>> {
        let range = self.row_range(start, len)?;
        Ok(match &self.ids {
            TopKIds::U16(v) => v[range].iter().map(|&i| u32::from(i)).collect(),
            TopKIds::U32(v) => v[range].to_vec(),
        })
    }

    /// Rows `start..start + len` as tensors on `device`: ids `[len, k]` u32, values `[len, k]` f32.
    pub fn tensors(&self, start: usize, len: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let ids = self.ids_u32(start, len)?;
        let range = self.row_range(start, len)?;
        let ids = Tensor::from_vec(ids, (len, self.k), device)?;
        let values = Tensor::from_slice(&self.values[range], (len, self.k), device)?;
        Ok((ids, values))
    }

    fn row_range(&self, start: usize, len: usize) -> Result<std::ops::Range<usize>> {
        if start + len > self.rows() {
            return Err(Error::Fitness {
                reason: format!(
                    "rows {start}..{} asked of a teacher record with {} rows",
                    start + len,
                    self.rows()
                ),
            });
        }
        Ok(start * self.k..(start + len) * self.k)
    }
}

/// The top-k ids of each `vocab`-wide row of `flat`, row after row, each row in [`rank`] order.
fn top_k_rows(flat: &[f32], vocab: usize, k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(flat.len() / vocab * k);
    // Each entry packs (rank key, id) into one u64 whose integer order is the top-k order, so
    // selection and sorting compare plain integers instead of chasing ids into the row (about
    // twice as fast on a 49k vocabulary). Ids are distinct, so the order is total
    // and the result the same as `rank` gives.
    let mut packed: Vec<u64> = Vec::with_capacity(vocab);
    for row in flat.chunks(vocab) {
        packed.clear();
        packed.extend(
            row.iter()
                .enumerate()
                .map(|(i, &x)| (u64::from(rank_key(x)) << 32) | i as u64),
        );
        if k < vocab {
            packed.select_nth_unstable(k - 1);
        }
        let top = &mut packed[..k];
        top.sort_unstable();
        out.extend(top.iter().map(|&p| p as u32));
    }
    out
}

/// A logit's place in the top-k order as an integer: smaller comes first. Larger logits get
/// smaller keys, +0 and −0 the same key, every NaN the largest (after −∞).
fn rank_key(x: f32) -> u32 {
    if x.is_nan() {
        return u32::MAX;
    }
    let bits = if x == 0.0 { 0 } else { x.to_bits() };
    // The usual order-preserving map of IEEE floats onto unsigned integers (ascending), negated.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    !ascending
}

/// Top-k order: larger logit first, NaN last, ties (including ±0) to the lower id.
fn rank(row: &[f32], a: u32, b: u32) -> std::cmp::Ordering {
    let (x, y) = (row[a as usize], row[b as usize]);
    let by_value = match (x.is_nan(), y.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
    };
    by_value.then(a.cmp(&b))
}

/// Per-position KL(teacher ‖ student) restricted to the teacher's top-k: `student` `[n, V]`
/// logits (any float dtype), `teacher_ids` `[n, k]` u32, `teacher_values` `[n, k]`. Returns `[n]`
/// f32.
pub fn top_k_kl(
    student: &Tensor,
    teacher_ids: &Tensor,
    teacher_values: &Tensor,
) -> candle_core::Result<Tensor> {
    // Gather first, so only n·k values are converted to f32.
    top_k_kl_gathered(&student.gather(teacher_ids, 1)?, teacher_values)
}

/// The same from student logits already gathered at the teacher's ids (`[n, k]`, column j is id
/// `teacher_ids[:, j]`), e.g. from an `lm_head` evaluated only on those rows.
pub fn top_k_kl_gathered(
    student_at_ids: &Tensor,
    teacher_values: &Tensor,
) -> candle_core::Result<Tensor> {
    let zs = student_at_ids.to_dtype(DType::F32)?; // [n, k]
    let log_ps = candle_nn::ops::log_softmax(&zs, 1)?;
    let log_pt = candle_nn::ops::log_softmax(&teacher_values.to_dtype(DType::F32)?, 1)?;
    kl_rows(&log_pt, &log_ps)
}

/// Per-position KL(teacher ‖ student) over the whole vocabulary: both `[n, V]`. Returns `[n]`.
pub fn full_kl(student: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
    let log_ps = candle_nn::ops::log_softmax(&student.to_dtype(DType::F32)?, 1)?;
    let log_pt = candle_nn::ops::log_softmax(&teacher.to_dtype(DType::F32)?, 1)?;
    kl_rows(&log_pt, &log_ps)
}

/// Σ_v p_T(v)·(log p_T(v) − log p_S(v)) per row.
fn kl_rows(log_pt: &Tensor, log_ps: &Tensor) -> candle_core::Result<Tensor> {
    (log_pt.exp()? * (log_pt - log_ps)?)?.sum(1)
}

/// Running mean of per-position KL over the pieces of a minibatch, summed in f64 in the order
/// the pieces are added (so the result is bit-reproducible).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KlMean {
    pub sum: f64,
    pub positions: usize,
}

impl KlMean {
    /// Adds one piece's top-k KL: `student` is its `[len, V]` logits, and the teacher rows of
    /// the piece start at `teacher_row`. The piece's last position is not scored.
    pub fn add_top_k(
        &mut self,
        student: &Tensor,
        teacher: &TeacherTopK,
        teacher_row: usize,
    ) -> Result<()> {
        let (len, _) = student.dims2()?;
        if len < 2 {
            return Ok(());
        }
        let (ids, values) = teacher.tensors(teacher_row, len - 1, student.device())?;
        let kl = top_k_kl(&student.narrow(0, 0, len - 1)?, &ids, &values)?;
        self.add_positions(&kl)
    }

    /// Adds one piece's full-vocabulary KL (both `[len, V]`); the last position is not scored.
    pub fn add_full(&mut self, student: &Tensor, teacher: &Tensor) -> Result<()> {
        let (len, _) = student.dims2()?;
        if len < 2 {
            return Ok(());
        }
        let kl = full_kl(
            &student.narrow(0, 0, len - 1)?,
            &teacher.narrow(0, 0, len - 1)?,
        )?;
        self.add_positions(&kl)
    }

    /// Adds per-position KL values (`[n]`).
    pub fn add_positions(&mut self, kl: &Tensor) -> Result<()> {
        let kl: Vec<f32> = kl
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        self.sum += kl.iter().map(|&x| f64::from(x)).sum::<f64>();
        self.positions += kl.len();
        Ok(())
    }

    /// The mean; an error when no position was scored (every piece had one token).
    pub fn mean(&self) -> Result<f64> {
        if self.positions == 0 {
            return Err(Error::Fitness {
                reason: "the minibatch has no scored positions (every piece is one token long)"
                    .into(),
            });
        }
        Ok(self.sum / self.positions as f64)
    }
}

/// The first row of every pool piece in pool-aligned records such as [`TeacherTopK`].
pub fn piece_offsets(piece_lens: &[usize]) -> Vec<usize> {
    piece_lens
        .iter()
        .scan(0, |at, &len| {
            let start = *at;
            *at += len;
            Some(start)
        })
        .collect()
}

/// Plain-slice implementations of the same quantities, in f64 with max-subtraction; slow, the
/// oracle for tests.
pub mod reference {
    /// Top-k (ids, values) of one row: larger first, NaN last, ties to the lower id.
    pub fn top_k(row: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.sort_by(|&a, &b| super::rank(row, a, b));
        ids.truncate(k);
        let values = ids.iter().map(|&i| row[i as usize]).collect();
        (ids, values)
    }

    /// log-softmax of `z` in f64.
    pub fn log_softmax(z: &[f64]) -> Vec<f64> {
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
        z.iter().map(|&x| x - lse).collect()
    }

    fn kl(log_pt: &[f64], log_ps: &[f64]) -> f64 {
        log_pt
            .iter()
            .zip(log_ps)
            .map(|(&t, &s)| t.exp() * (t - s))
            .sum()
    }

    /// KL(teacher ‖ student) over the teacher's top-k `ids` of one position.
    pub fn top_k_kl(student_row: &[f32], ids: &[u32], teacher_values: &[f32]) -> f64 {
        let zs: Vec<f64> = ids
            .iter()
            .map(|&i| f64::from(student_row[i as usize]))
            .collect();
        let zt: Vec<f64> = teacher_values.iter().map(|&x| f64::from(x)).collect();
        kl(&log_softmax(&zt), &log_softmax(&zs))
    }

    /// KL(teacher ‖ student) over the whole vocabulary at one position.
    pub fn full_kl(student_row: &[f32], teacher_row: &[f32]) -> f64 {
        let zs: Vec<f64> = student_row.iter().map(|&x| f64::from(x)).collect();
        let zt: Vec<f64> = teacher_row.iter().map(|&x| f64::from(x)).collect();
        kl(&log_softmax(&zt), &log_softmax(&zs))
    }
}

/// The teacher's arrays as one little-endian byte string each, so a record of a billion values
/// encodes and decodes at memory speed (bincode writes a `Vec<f32>` one element at a time:
/// 7 s for a 1.5 GB record, measured on the reference settings).
mod le_bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// A plain number type: fixed width, no padding, every bit pattern valid.
    pub trait Plain: Copy {
        const WIDTH: usize;
        fn from_le(b: &[u8]) -> Self;
        #[cfg_attr(target_endian = "little", allow(dead_code))]
        fn to_le(self, out: &mut Vec<u8>);
    }

    macro_rules! plain {
        ($($t:ty),*) => {$(
            impl Plain for $t {
                const WIDTH: usize = std::mem::size_of::<$t>();
                fn from_le(b: &[u8]) -> Self {
                    let mut a = [0u8; std::mem::size_of::<$t>()];
                    a.copy_from_slice(b);
                    <$t>::from_le_bytes(a)
                }
                fn to_le(self, out: &mut Vec<u8>) {
                    out.extend_from_slice(&self.to_le_bytes());
                }
            }
        )*};
    }
    plain!(u16, u32, f32);

    pub fn serialize<S: Serializer, T: Plain>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: `T` is u16, u32 or f32 (the only `Plain` types): no padding and no invalid
            // bit patterns, so its memory read as `len · WIDTH` bytes (alignment 1) is valid for
            // the slice's lifetime; on a little-endian target those bytes are the LE encoding.
            let bytes =
                unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * T::WIDTH) };
            s.serialize_bytes(bytes)
        }
        #[cfg(not(target_endian = "little"))]
        {
            let mut out = Vec::with_capacity(v.len() * T::WIDTH);
            for &x in v {
                x.to_le(&mut out);
            }
            s.serialize_bytes(&out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Plain>(d: D) -> Result<Vec<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Plain> Visitor<'de> for V<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a byte string of {}-byte little-endian numbers",
                    T::WIDTH
                )
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Vec<T>, E> {
                if !b.len().is_multiple_of(T::WIDTH) {
                    return Err(E::custom(format!(
                        "{} bytes is not a whole number of {}-byte values",
                        b.len(),
                        T::WIDTH
                    )));
                }
                Ok(b.chunks_exact(T::WIDTH).map(T::from_le).collect())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                // Formats without byte strings (JSON) hand the bytes over one by one.
                let mut b = Vec::new();
                while let Some(x) = seq.next_element::<u8>()? {
                    b.push(x);
                }
                self.visit_bytes::<A::Error>(&b)
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}
