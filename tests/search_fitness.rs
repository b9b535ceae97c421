//! Fitness (ALGORITHM.md §8): teacher top-k with ties to the lower id, KL over the teacher's
//! top-k and over the full vocabulary, the mean over all positions but the last of each piece,
//! and the candle implementation against the plain-slice reference.

use candle_core::{DType, Device, Tensor};
use tyr::rng::Stream;
use tyr::search::fitness::{full_kl, piece_offsets, reference, top_k_kl, top_k_kl_gathered};
use tyr::search::{KlMean, TeacherTopK, TopKIds};

fn logits(rows: &[&[f32]]) -> Tensor {
    let v = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), v), &Device::Cpu).unwrap()
}

fn random_logits(seed: u64, rows: usize, vocab: usize, scale: f64) -> Vec<f32> {
    let mut rng = Stream::new(seed, "test-logits", &[]);
    (0..rows * vocab)
        .map(|_| (rng.normal() * scale) as f32)
        .collect()
}

#[test]
fn top_k_ties_go_to_the_lower_id() {
    let t = TeacherTopK::from_logits(&logits(&[&[1.0, 3.0, 3.0, 2.0, 3.0, -0.0, 0.0]]), 4).unwrap();
    assert_eq!(t.ids_u32(0, 1).unwrap(), vec![1, 2, 4, 3]);
    assert_eq!(t.values(), &[3.0, 3.0, 3.0, 2.0]);
    // ±0 tie: the lower id first.
    let t = TeacherTopK::from_logits(&logits(&[&[-1.0, 0.0, -0.0]]), 2).unwrap();
    assert_eq!(t.ids_u32(0, 1).unwrap(), vec![1, 2]);
    // NaN is never preferred to a number.
    let t = TeacherTopK::from_logits(&logits(&[&[f32::NAN, -5.0, f32::NAN]]), 2).unwrap();
    assert_eq!(t.ids_u32(0, 1).unwrap()[0], 1);
}

#[test]
fn top_k_ids_are_u16_up_to_65536_tokens_and_u32_above() {
    let small = TeacherTopK::from_logits(
        &Tensor::zeros((1, 65_536), DType::F32, &Device::Cpu).unwrap(),
        3,
    )
    .unwrap();
    assert!(matches!(small.ids(), TopKIds::U16(_)));
    let mut row = vec![0f32; 65_537];
    row[65_536] = 1.0;
    let big = TeacherTopK::from_logits(&logits(&[&row]), 3).unwrap();
    assert!(matches!(big.ids(), TopKIds::U32(_)));
    assert_eq!(big.ids_u32(0, 1).unwrap(), vec![65_536, 0, 1]);
}

#[test]
fn top_k_is_clamped_to_the_vocabulary_and_zero_is_rejected() {
    let t = TeacherTopK::from_logits(&logits(&[&[0.5, 2.0, 1.0]]), 10).unwrap();
    assert_eq!(t.k(), 3);
    assert_eq!(t.ids_u32(0, 1).unwrap(), vec![1, 2, 0]);
    assert!(TeacherTopK::from_logits(&logits(&[&[0.5]]), 0).is_err());
}

#[test]
fn candle_top_k_equals_the_reference() {
    let (rows, vocab, k) = (9, 301, 17);
    let mut z = random_logits(1, rows, vocab, 2.0);
    // Plant ties: quantise some logits.
    for x in z.iter_mut().step_by(3) {
        *x = (*x * 2.0).round() / 2.0;
    }
    let t = TeacherTopK::from_logits(
        &Tensor::from_vec(z.clone(), (rows, vocab), &Device::Cpu).unwrap(),
        k,
    )
    .unwrap();
    for r in 0..rows {
        let (ids, values) = reference::top_k(&z[r * vocab..(r + 1) * vocab], k);
        assert_eq!(t.ids_u32(r, 1).unwrap(), ids);
        assert_eq!(&t.values()[r * k..(r + 1) * k], values.as_slice());
    }
}

#[test]
fn top_k_equals_the_reference_with_every_special_value_and_any_k() {
    // NaN, ±0, ±∞, subnormals, the extremes and heavy ties, at k from 1 to the whole row.
    let specials = [
        f32::NAN,
        -f32::NAN,
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE / 4.0,
        -f32::MIN_POSITIVE / 4.0,
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
    ];
    let (rows, vocab) = (6, 97);
    let mut z = random_logits(3, rows, vocab, 1.0);
    let mut rng = Stream::new(4, "specials", &[]);
    for x in z.iter_mut() {
        if rng.next_f64() < 0.4 {
            *x = specials[rng.below(specials.len())];
        }
    }
    let t = Tensor::from_vec(z.clone(), (rows, vocab), &Device::Cpu).unwrap();
    for k in [1, 2, 5, 48, 96, 97] {
        let got = TeacherTopK::from_logits(&t, k).unwrap();
        for r in 0..rows {
            let (ids, values) = reference::top_k(&z[r * vocab..(r + 1) * vocab], k);
            assert_eq!(got.ids_u32(r, 1).unwrap(), ids, "row {r}, k = {k}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.values()[r * k..(r + 1) * k]), bits(&values));
        }
    }
}

#[test]
fn top_k_kl_matches_a_hand_computed_example() {
    // Teacher top-2 = ids {3, 1} with equal logits: p_T = (½, ½). The student's logits at those
    // ids are ln 3 (id 3) and 0 (id 1): p_S = (¾, ¼) over the top-k; the other ids are ignored.
    let teacher = TeacherTopK::from_logits(&logits(&[&[-1.0, 2.0, 0.0, 2.0]]), 2).unwrap();
    assert_eq!(teacher.ids_u32(0, 1).unwrap(), vec![1, 3]);
    let student = logits(&[&[50.0, 0.0, -7.0, 3f32.ln()]]);
    let (ids, values) = teacher.tensors(0, 1, &Device::Cpu).unwrap();
    let kl = top_k_kl(&student, &ids, &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln(); // ½·ln(4/3)
    assert!((f64::from(kl) - want).abs() < 1e-6, "{kl} vs {want}");
}

#[test]
fn full_kl_matches_a_hand_computed_example() {
    // p_T = (½, ½), p_S = (¼, ¾).
    let kl = full_kl(&logits(&[&[0.0, 3f32.ln()]]), &logits(&[&[1.0, 1.0]]))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
    assert!((f64::from(kl) - want).abs() < 1e-6);
}

#[test]
fn kl_is_zero_for_identical_logits() {
    let z = random_logits(2, 5, 64, 3.0);
    let t = Tensor::from_vec(z, (5, 64), &Device::Cpu).unwrap();
    let teacher = TeacherTopK::from_logits(&t, 8).unwrap();
    let (ids, values) = teacher.tensors(0, 5, &Device::Cpu).unwrap();
    let top = top_k_kl(&t, &ids, &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let full = full_kl(&t, &t).unwrap().to_vec1::<f32>().unwrap();
    assert!(
        top.iter().chain(&full).all(|&x| x.abs() < 1e-6),
        "{top:?} {full:?}"
    );
    // A shift of all logits by a constant is the same distribution.
    let shifted = (&t + 4.0).unwrap();
    let top = top_k_kl(&shifted, &ids, &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(top.iter().all(|&x| x.abs() < 1e-5));
}

#[test]
fn candle_kl_equals_the_reference() {
    let (rows, vocab, k) = (7, 300, 17);
    let zt = random_logits(3, rows, vocab, 2.0);
    let zs = random_logits(4, rows, vocab, 2.0);
    let tt = Tensor::from_vec(zt.clone(), (rows, vocab), &Device::Cpu).unwrap();
    let ts = Tensor::from_vec(zs.clone(), (rows, vocab), &Device::Cpu).unwrap();
    let teacher = TeacherTopK::from_logits(&tt, k).unwrap();
    let (ids, values) = teacher.tensors(0, rows, &Device::Cpu).unwrap();
    let top = top_k_kl(&ts, &ids, &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let full = full_kl(&ts, &tt).unwrap().to_vec1::<f32>().unwrap();
    for r in 0..rows {
        let srow = &zs[r * vocab..(r + 1) * vocab];
        let trow = &zt[r * vocab..(r + 1) * vocab];
        let (rids, rvals) = reference::top_k(trow, k);
        let want_top = reference::top_k_kl(srow, &rids, &rvals);
        let want_full = reference::full_kl(srow, trow);
        assert!(
            (f64::from(top[r]) - want_top).abs() < 1e-5 * (1.0 + want_top),
            "row {r}"
        );
        assert!(
            (f64::from(full[r]) - want_full).abs() < 1e-5 * (1.0 + want_full),
            "row {r}"
        );
        assert!(want_top > 0.0 && want_full > 0.0);
    }
    // The student may be half precision: the gathered values are widened to f32.
    let half = top_k_kl(&ts.to_dtype(DType::BF16).unwrap(), &ids, &values).unwrap();
    let diff = (half - Tensor::from_vec(top, rows, &Device::Cpu).unwrap()).unwrap();
    assert!(
        diff.abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 0.05
    );
}

#[test]
fn the_mean_skips_the_last_position_of_every_piece() {
    // Two pieces (3 and 2 tokens) in pool order; the student equals the teacher except at each
    // piece's last position, where it is wildly off: those positions must not count.
    let vocab = 16;
    let pieces = [3usize, 2];
    let zt = random_logits(5, 5, vocab, 1.0);
    let teacher = TeacherTopK::from_logits(
        &Tensor::from_vec(zt.clone(), (5, vocab), &Device::Cpu).unwrap(),
        4,
    )
    .unwrap();
    let offsets = piece_offsets(&pieces);
    assert_eq!(offsets, vec![0, 3]);
    let mut mean = KlMean::default();
    let mut full_mean = KlMean::default();
    for (&start, &len) in offsets.iter().zip(&pieces) {
        let mut zs = zt[start * vocab..(start + len) * vocab].to_vec();
        let last = (len - 1) * vocab;
        zs[last..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (i * 37 % 11) as f32 * 9.0);
        let s = Tensor::from_vec(zs, (len, vocab), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(
            zt[start * vocab..(start + len) * vocab].to_vec(),
            (len, vocab),
            &Device::Cpu,
        )
        .unwrap();
        mean.add_top_k(&s, &teacher, start).unwrap();
        full_mean.add_full(&s, &t).unwrap();
    }
    assert_eq!(mean.positions, 3);
    assert!(mean.mean().unwrap().abs() < 1e-6);
    assert!(full_mean.mean().unwrap().abs() < 1e-6);
    assert!(KlMean::default().mean().is_err());
}

#[test]
fn teacher_rows_out_of_range_are_an_error() {
    let t = TeacherTopK::from_logits(&logits(&[&[0.0, 1.0], &[1.0, 0.0]]), 1).unwrap();
    assert_eq!(t.rows(), 2);
    assert!(t.tensors(1, 2, &Device::Cpu).is_err());
}

#[test]
fn pieces_appended_equal_one_extraction_and_gathered_kl_equals_kl() {
    let (rows, vocab, k) = (6, 50, 5);
    let zt = random_logits(8, rows, vocab, 2.0);
    let zs = random_logits(9, rows, vocab, 2.0);
    let all = Tensor::from_vec(zt.clone(), (rows, vocab), &Device::Cpu).unwrap();
    let whole = TeacherTopK::from_logits(&all, k).unwrap();
    let mut parts = TeacherTopK::from_logits(&all.narrow(0, 0, 2).unwrap(), k).unwrap();
    parts
        .append(&TeacherTopK::from_logits(&all.narrow(0, 2, 4).unwrap(), k).unwrap())
        .unwrap();
    assert_eq!(parts, whole);
    let other_k = TeacherTopK::from_logits(&all, k + 1).unwrap();
    assert!(parts.append(&other_k).is_err());

    let s = Tensor::from_vec(zs, (rows, vocab), &Device::Cpu).unwrap();
    let (ids, values) = whole.tensors(0, rows, &Device::Cpu).unwrap();
    let direct = top_k_kl(&s, &ids, &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let gathered = top_k_kl_gathered(&s.gather(&ids, 1).unwrap(), &values)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(direct, gathered);
}
