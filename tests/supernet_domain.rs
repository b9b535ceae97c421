//! The supernet domain layer without the engine: `build_layer` on a tiny random layer (resuming
//! after the attention variants gives the same layer; a level above the unit count is refused;
//! built in parts and joined, it gives the same bits)
//! and the search's scorer over an in-memory variant source (incremental evaluation from the
//! parent's cached states gives the same fitness bits as a full forward, for both fitnesses).

mod common;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use tyr::model::random::random_source;
use tyr::model::{Llama, ModelConfig, StorageDtype};
use tyr::prune::ModuleKind;
use tyr::prune::expectation::Expectation;
use tyr::prune::grid::{GridOptions, TypeGrid, round1_grid};
use tyr::prune::local::{LocalPruneOptions, RemovalSchedule, Variant};
use tyr::search::{
    Configuration, FitnessKind, Minibatch, PieceSlice, ScoreRequest, Scorer, TeacherTopK,
};
use tyr::supernet::acts::Acts;
use tyr::supernet::build::{
    BuildCheckpoint, BuildOptions, FfnStats, LayerBuild, ModuleLevels, ModulePart, NoCheckpoint,
    build_layer, build_module_part, join_layer, join_parts, level_share, module_expectation,
};
use tyr::supernet::layer::DenseLayer;
use tyr::supernet::rounds::search_space;
use tyr::supernet::scorer::{ModelScorer, ScorerInputs, VariantSource};

fn options() -> BuildOptions {
    BuildOptions {
        expectation: Expectation::DensityWeighted,
        ffn_stats: FfnStats::ExpectedAttention,
        attn_pruning: LocalPruneOptions::attn_default(),
        ffn_pruning: LocalPruneOptions {
            schedule: RemovalSchedule::Passes(4),
            ..LocalPruneOptions::ffn_default()
        },
        // Every level at once; the parts below build one level at a time, so comparing them
        // also checks that the grouping of levels changes nothing.
        parallel_levels: 0,
        variant_dtype: StorageDtype::F32,
    }
}

fn levels(levels: &[usize]) -> ModuleLevels {
    ModuleLevels {
        levels: levels.to_vec(),
        centre: None,
    }
}

/// Piece lengths of the little pool every test uses.
const PIECES: [usize; 4] = [9, 5, 9, 3];

fn pool(vocab: usize) -> Vec<Vec<u32>> {
    let mut k = 0u32;
    PIECES
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    k += 1;
                    (k * 7 + 3) % vocab as u32
                })
                .collect()
        })
        .collect()
}

/// X_0 of the pool: its embeddings, pieces in pool order.
fn x0(cfg: &ModelConfig, model: &Llama, pieces: &[Vec<u32>]) -> Acts {
    let ids: Vec<u32> = pieces.iter().flatten().copied().collect();
    let n = ids.len();
    let x = model
        .embeddings()
        .forward(&Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_eq!(x.dims(), [n, cfg.hidden_size]);
    Acts {
        x,
        lengths: pieces.iter().map(Vec::len).collect(),
    }
}

fn bits(b: &LayerBuild) -> Vec<u8> {
    let mut out = bincode::serialize(&(&b.attn, &b.ffn, &b.summary)).unwrap();
    for w in [&b.o_bar, &b.d_bar] {
        out.extend(w.iter().flat_map(|v| v.to_bits().to_le_bytes()));
    }
    out
}

/// Records what the build saved, and can hand it back as an earlier attempt's progress.
#[derive(Default)]
struct Remembering {
    saved: Option<Vec<Variant>>,
    offer: Option<Vec<Variant>>,
    reports: Vec<(u64, u64)>,
}

impl BuildCheckpoint for Remembering {
    fn report(&mut self, done: u64, total: u64) {
        self.reports.push((done, total));
    }
    fn resumed_attn(&mut self) -> tyr::Result<Option<Vec<Variant>>> {
        Ok(self.offer.clone())
    }
    fn attn_built(&mut self, attn: &[Variant]) -> tyr::Result<()> {
        self.saved = Some(attn.to_vec());
        Ok(())
    }
}

#[test]
fn a_build_resumed_after_its_attention_variants_equals_an_uninterrupted_one() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let x = x0(&cfg, &model, &pool(cfg.vocab_size));
    let dense = DenseLayer::load(&cfg, 0, &src).unwrap();
    let (a, f) = (levels(&[0, 1, 2, 3]), levels(&[0, 12, 24, 36]));
    let whole = build_layer(&cfg, &dense, &x, 1, &a, &f, &options(), &mut NoCheckpoint).unwrap();
    assert_eq!(whole.attn.len(), 4);
    assert_eq!(
        whole.ffn.iter().map(|v| v.level).collect::<Vec<_>>(),
        f.levels
    );

    let mut first = Remembering::default();
    let again = build_layer(&cfg, &dense, &x, 1, &a, &f, &options(), &mut first).unwrap();
    assert_eq!(bits(&again), bits(&whole), "a build is deterministic");
    assert_eq!(first.reports, [(1, 4), (2, 4), (3, 4), (4, 4)]);

    // A resumed attempt is offered the saved attention variants and must not rebuild them.
    let mut resumed = Remembering {
        offer: first.saved.clone(),
        ..Remembering::default()
    };
    let r = build_layer(&cfg, &dense, &x, 1, &a, &f, &options(), &mut resumed).unwrap();
    assert!(
        resumed.saved.is_none(),
        "the attention variants were rebuilt"
    );
    assert_eq!(bits(&r), bits(&whole));

    // Saved variants of another grid are not used.
    let mut stale = Remembering {
        offer: first.saved.map(|v| v[..2].to_vec()),
        ..Remembering::default()
    };
    let s = build_layer(&cfg, &dense, &x, 1, &a, &f, &options(), &mut stale).unwrap();
    assert!(stale.saved.is_some());
    assert_eq!(bits(&s), bits(&whole));
}

#[test]
fn a_level_above_the_unit_count_is_refused_naming_the_layer() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let x = x0(&cfg, &model, &pool(cfg.vocab_size));
    let dense = DenseLayer::load(&cfg, 2, &src).unwrap();
    let err = build_layer(
        &cfg,
        &dense,
        &x,
        1,
        &levels(&[0, 5]),
        &levels(&[0]),
        &options(),
        &mut NoCheckpoint,
    )
    .err()
    .expect("level 5 of 4 heads");
    let msg = err.to_string();
    assert!(msg.contains("layer 2") && msg.contains("level 5"), "{msg}");
}

/// One module's parts in `shares` shares, as the `supernet-part` stages build them.
fn parts(
    cfg: &ModelConfig,
    dense: &DenseLayer,
    x: &Acts,
    module: ModuleKind,
    grid: &ModuleLevels,
    shares: usize,
    ffn_o_proj: Option<&[f32]>,
) -> Vec<ModulePart> {
    let o = options();
    let opts = match module {
        ModuleKind::Attn => o.attn_pruning,
        ModuleKind::Ffn => o.ffn_pruning,
    };
    (0..shares)
        .map(|g| {
            let levels = level_share(&grid.levels, g, shares).unwrap();
            build_module_part(
                cfg,
                dense,
                x,
                module,
                levels,
                ffn_o_proj,
                &opts,
                1,
                o.variant_dtype,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn a_layer_built_in_parts_and_joined_equals_one_build_bit_for_bit() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let x = x0(&cfg, &model, &pool(cfg.vocab_size));
    let dense = DenseLayer::load(&cfg, 1, &src).unwrap();
    let (a, f) = (levels(&[0, 1, 2, 3]), levels(&[0, 12, 24, 36]));
    for stats in [FfnStats::DenseAttention, FfnStats::ExpectedAttention] {
        let opts = BuildOptions {
            ffn_stats: stats,
            ..options()
        };
        let whole = build_layer(&cfg, &dense, &x, 1, &a, &f, &opts, &mut NoCheckpoint).unwrap();
        // 1 share per module (`module`), 3 (uneven shares), 6 (two of them empty).
        for shares in [1, 3, 6] {
            let attn = parts(&cfg, &dense, &x, ModuleKind::Attn, &a, shares, None);
            assert_eq!(
                attn.iter().filter(|p| p.stats.is_none()).count(),
                shares.saturating_sub(4),
                "only empty shares skip the pass"
            );
            let o_bar = match stats {
                FfnStats::DenseAttention => None,
                FfnStats::ExpectedAttention => {
                    let (v, _) = join_parts(1, ModuleKind::Attn, &a, attn.clone()).unwrap();
                    let e = module_expectation(&dense, ModuleKind::Attn, &a, &v, opts.expectation);
                    Some(e.unwrap().0)
                }
            };
            let ffn = parts(
                &cfg,
                &dense,
                &x,
                ModuleKind::Ffn,
                &f,
                shares,
                o_bar.as_deref(),
            );
            let joined = join_layer(&dense, 1, &a, &f, attn, ffn, opts.expectation).unwrap();
            assert_eq!(bits(&joined), bits(&whole), "{stats:?}, {shares} shares");
        }
    }
}

#[test]
fn sixteen_bit_variants_are_the_f32_ones_rounded_and_store_in_half_the_bytes() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let x = x0(&cfg, &model, &pool(cfg.vocab_size));
    let dense = DenseLayer::load(&cfg, 1, &src).unwrap();
    let (a, f) = (levels(&[0, 1, 2, 3]), levels(&[0, 12, 24, 36]));
    // Dense-attention statistics: the FFN's H does not depend on the attention's variants, so
    // every 16-bit variant must be its f32 twin rounded.
    let with = |variant_dtype| BuildOptions {
        ffn_stats: FfnStats::DenseAttention,
        variant_dtype,
        ..options()
    };
    let full = build_layer(
        &cfg,
        &dense,
        &x,
        1,
        &a,
        &f,
        &with(StorageDtype::F32),
        &mut NoCheckpoint,
    )
    .unwrap();
    for dtype in [StorageDtype::Bf16, StorageDtype::F16] {
        let half =
            build_layer(&cfg, &dense, &x, 1, &a, &f, &with(dtype), &mut NoCheckpoint).unwrap();
        for (h, w) in half
            .attn
            .iter()
            .chain(&half.ffn)
            .zip(full.attn.iter().chain(&full.ffn))
        {
            assert_eq!((h.level, &h.kept, h.storage), (w.level, &w.kept, dtype));
            let mut rounded = w.weight.clone();
            dtype.round(&mut rounded);
            assert_eq!(h.weight, rounded, "{dtype:?} level {}", h.level);
            // The record keeps every bit, in 2 bytes a value.
            let bytes = bincode::serialize(h).unwrap();
            let back: Variant = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, *h);
            let f32_bytes = bincode::serialize(w).unwrap();
            assert!(
                h.weight.is_empty() || bytes.len() < f32_bytes.len() * 3 / 5,
                "{} vs {} bytes",
                bytes.len(),
                f32_bytes.len()
            );
        }
        // The averaged weights are made from the rounded variants.
        assert_ne!(half.o_bar, full.o_bar);
    }
}

#[test]
fn parts_that_do_not_make_up_the_grid_are_refused() {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 5).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let x = x0(&cfg, &model, &pool(cfg.vocab_size));
    let dense = DenseLayer::load(&cfg, 0, &src).unwrap();
    let a = levels(&[0, 1, 2, 3]);
    let attn = parts(&cfg, &dense, &x, ModuleKind::Attn, &a, 2, None);
    let err = |parts: &[ModulePart], module| {
        join_parts(0, module, &a, parts.to_vec())
            .expect_err("refused")
            .to_string()
    };
    // A share missing, the shares out of order, or another module's parts.
    assert!(err(&attn[..1], ModuleKind::Attn).contains("[0, 1]"));
    let swapped = [attn[1].clone(), attn[0].clone()];
    assert!(err(&swapped, ModuleKind::Attn).contains("[2, 3, 0, 1]"));
    assert!(err(&attn, ModuleKind::Ffn).contains("attn variants"));
    // Parts whose statistics differ (built on other activations) are not joined.
    let other = Acts {
        x: (&x.x * 2.0).unwrap(),
        lengths: x.lengths.clone(),
    };
    let mixed = [
        attn[0].clone(),
        parts(&cfg, &dense, &other, ModuleKind::Attn, &a, 2, None)[1].clone(),
    ];
    assert!(err(&mixed, ModuleKind::Attn).contains("different statistics"));
    // A share index past the count is an error, not a panic.
    assert!(level_share(&a.levels, 2, 2).is_err());
    assert!(level_share(&a.levels, 0, 0).is_err());
}

/// The variants of every layer, by (layer, module, level).
struct InMemory {
    layers: usize,
    variants: BTreeMap<(usize, ModuleKind, usize), Variant>,
}

impl VariantSource for InMemory {
    fn layers(&self) -> usize {
        self.layers
    }
    fn variant(&self, layer: usize, module: ModuleKind, level: usize) -> tyr::Result<Variant> {
        self.variants
            .get(&(layer, module, level))
            .cloned()
            .ok_or_else(|| tyr::Error::msg(format!("no {module} variant {level} in {layer}")))
    }
}

struct Supernet {
    cfg: ModelConfig,
    src: tyr::model::MemorySource,
    pieces: Vec<Vec<u32>>,
    grids: (TypeGrid, TypeGrid),
    variants: InMemory,
    teacher: TeacherTopK,
}

/// Round 1 of a 3-layer supernet, every layer calibrated on X_0 (enough for the scorer).
fn supernet() -> Supernet {
    let cfg = common::uniform_config();
    let src = random_source(&cfg, 9).unwrap();
    let model = Llama::load(&cfg, &src).unwrap();
    let pieces = pool(cfg.vocab_size);
    let x = x0(&cfg, &model, &pieces);
    let g = GridOptions {
        initial_step: 0.25,
        ..GridOptions::default()
    };
    let n = cfg.n_layers();
    let ga = round1_grid(ModuleKind::Attn, 0.5, &vec![4; n], &g).unwrap();
    let gf = round1_grid(ModuleKind::Ffn, 0.5, &vec![48; n], &g).unwrap();
    let mut variants = BTreeMap::new();
    for l in 0..n {
        let dense = DenseLayer::load(&cfg, l, &src).unwrap();
        let built = build_layer(
            &cfg,
            &dense,
            &x,
            1,
            &levels(&ga.modules[l].levels),
            &levels(&gf.modules[l].levels),
            &options(),
            &mut NoCheckpoint,
        )
        .unwrap();
        for (kind, vs) in [(ModuleKind::Attn, built.attn), (ModuleKind::Ffn, built.ffn)] {
            for v in vs {
                variants.insert((l, kind, v.level), v);
            }
        }
    }
    // The teacher: the dense model's logits at every pool position, pieces in pool order.
    let rows: Vec<Tensor> = pieces
        .iter()
        .map(|p| {
            let ids = Tensor::from_vec(p.clone(), (1, p.len()), &Device::Cpu).unwrap();
            model.forward(&ids).unwrap().squeeze(0).unwrap()
        })
        .collect();
    let teacher = TeacherTopK::from_logits(&Tensor::cat(&rows, 0).unwrap(), 8).unwrap();
    Supernet {
        cfg,
        src,
        pieces,
        grids: (ga, gf),
        variants: InMemory {
            layers: n,
            variants,
        },
        teacher,
    }
}

/// Configurations of the round's space: the all-centre parent and candidates that change it
/// from the first, the middle and the last layer on.
fn configurations(s: &Supernet) -> (Configuration, Vec<Configuration>) {
    let (ga, gf) = &s.grids;
    let parent: Vec<[usize; 2]> = (0..s.cfg.n_layers())
        .map(|l| [ga.modules[l].centre, gf.modules[l].centre])
        .collect();
    let mut candidates = Vec::new();
    for l in 0..s.cfg.n_layers() {
        let mut c = parent.clone();
        // One step up in attention at layer l, one step down in FFN (within the lattice).
        let up = |m: &tyr::prune::grid::ModuleGrid, at: usize| {
            let i = m.levels.iter().position(|&v| v == at).unwrap();
            m.levels[(i + 1).min(m.levels.len() - 1)]
        };
        let down = |m: &tyr::prune::grid::ModuleGrid, at: usize| {
            let i = m.levels.iter().position(|&v| v == at).unwrap();
            m.levels[i.saturating_sub(1)]
        };
        c[l] = [up(&ga.modules[l], c[l][0]), down(&gf.modules[l], c[l][1])];
        candidates.push(tyr::supernet::rounds::configuration(&c));
    }
    let parent = tyr::supernet::rounds::configuration(&parent);
    let mut all = vec![parent.clone()];
    all.extend(candidates);
    (parent, all)
}

fn scores(s: &Supernet, fitness: FitnessKind, incremental: bool, cache_bytes: usize) -> Vec<u64> {
    let space = search_space(&s.grids.0, &s.grids.1).unwrap();
    let mut scorer = ModelScorer::new(
        &s.cfg,
        &s.src,
        ScorerInputs {
            space: &space,
            variants: &s.variants,
            pieces: &s.pieces,
            teacher: &s.teacher,
            fitness,
            incremental,
            cache_limit_bytes: cache_bytes,
            compute: tyr::model::Compute::Packed,
        },
    )
    .unwrap();
    let (parent, candidates) = configurations(s);
    let minibatch = Minibatch {
        slices: (0..s.pieces.len())
            .map(|piece| PieceSlice {
                piece,
                len: s.pieces[piece].len(),
            })
            .collect(),
    };
    let req = ScoreRequest {
        round: 1,
        generation: 0,
        stage: 0,
        parent: &parent,
        candidates: &candidates,
        parent_included: true,
        minibatch: &minibatch,
    };
    let f = scorer.score(&req).unwrap();
    assert_eq!(f.len(), candidates.len());
    assert!(f.iter().all(|v| v.is_finite() && *v >= 0.0), "{f:?}");
    f.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn layer_major_scoring_equals_a_full_forward_bit_for_bit_within_any_budget() {
    let s = supernet();
    for fitness in [FitnessKind::TopKKl, FitnessKind::FullKl] {
        let full = scores(&s, fitness, false, 1 << 30);
        let incremental = scores(&s, fitness, true, 1 << 30);
        assert_eq!(full, incremental, "{fitness:?}");
        // A budget of one byte: one candidate per wave, every dense layer read for its step
        // and every block dropped after it. Same bits.
        for inc in [true, false] {
            assert_eq!(
                scores(&s, fitness, inc, 1),
                full,
                "{fitness:?}, 1-byte budget"
            );
        }
        // The candidates differ from the parent, so their fitness does too.
        assert!(full[1..].iter().all(|&c| c != full[0]), "{fitness:?}");
    }
}

#[test]
fn a_source_missing_a_layer_is_refused() {
    let mut s = supernet();
    s.variants.layers = 2;
    let space = search_space(&s.grids.0, &s.grids.1).unwrap();
    let err = ModelScorer::new(
        &s.cfg,
        &s.src,
        ScorerInputs {
            space: &space,
            variants: &s.variants,
            pieces: &s.pieces,
            teacher: &s.teacher,
            fitness: FitnessKind::TopKKl,
            incremental: true,
            cache_limit_bytes: 1 << 30,
            compute: tyr::model::Compute::Packed,
        },
    )
    .err()
    .expect("2 layers of variants for a 3-layer model");
    assert!(err.to_string().contains("variants of 2 layers"), "{err}");
}
