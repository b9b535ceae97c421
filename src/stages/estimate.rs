//! Peak-memory estimates of the stages `[prune]` generates, from the model's shapes and the
//! section's settings, so the executor admits stages within the memory budget and refuses one
//! that cannot fit before it starts (`tyr plan --json` shows each estimate as `mem_bytes`).
//!
//! Each figure counts what today's code holds at the stage's peak (docs/ARCHITECTURE.md,
//! "Memory"): a few chunks of the activations `X` (layer stages stream X one chunk at a
//! time), the layer's
//! weights as read, packed and unpacked, the OBS matrices of the levels built at once, the
//! teacher's top-k record, and so on, plus a fixed allowance for the process itself. They are
//! upper-bound arithmetic, not measurements; the memory benchmark (`scripts/bench_memory.sh`)
//! is what checks them.

use crate::model::ModelConfig;
use crate::vocab::ModuleKind;

/// The process itself: code, allocator pools, tokenizer, thread stacks.
const BASE_BYTES: u64 = 256 << 20;
/// Most tokens per batch of the layer passes and of the teacher's forwards.
const PASS_TOKENS: u64 = crate::supernet::acts::BATCH_TOKENS as u64;
const TEACHER_TOKENS: u64 = crate::stages::teacher::BATCH_TOKENS as u64;

/// The shapes an estimate needs.
pub struct Shapes<'a> {
    pub cfg: &'a ModelConfig,
    /// Calibration tokens in the pool.
    pub tokens: u64,
    pub top_k: u64,
    pub eval_seq_len: u64,
    /// `[prune] chunk-mib` in bytes: the most activations one stored chunk of X holds.
    pub chunk_bytes: u64,
}

impl Shapes<'_> {
    fn hidden(&self) -> u64 {
        self.cfg.hidden_size as u64
    }

    /// One copy of the activations X, f32.
    fn x(&self) -> u64 {
        self.tokens * self.hidden() * 4
    }

    /// One chunk of X as a layer stage holds it: at most `chunk_bytes`, at least one batch,
    /// at most the whole of X.
    fn chunk(&self) -> u64 {
        let batch = PASS_TOKENS * self.hidden() * 4;
        self.chunk_bytes.max(batch).min(self.x())
    }

    /// Layer `l`'s weights in f32.
    fn layer(&self, l: usize) -> u64 {
        self.cfg.layer_params(l) as u64 * 4
    }

    fn embeddings(&self) -> u64 {
        self.cfg.vocab_size as u64 * self.hidden() * 4
    }

    /// The largest decoder layer's weights in f32.
    fn largest_layer(&self) -> u64 {
        (0..self.cfg.n_layers())
            .map(|l| self.layer(l))
            .max()
            .unwrap_or(0)
    }

    /// The whole model in f32 (decoder, embeddings, head): what no stage holds (tests compare).
    #[cfg(test)]
    fn model(&self) -> u64 {
        self.cfg.total_params() as u64 * 4
    }

    /// Logits of one batch of `tokens` positions, f32.
    fn logits(&self, tokens: u64) -> u64 {
        tokens * self.cfg.vocab_size as u64 * 4
    }

    /// The teacher's record: k (id, value) pairs of 8 bytes per position.
    fn teacher_record(&self) -> u64 {
        self.tokens * self.top_k.min(self.cfg.vocab_size as u64) * 8
    }

    /// `embed`: the pool (its ids, 4 bytes a token), one chunk of X_0 built and encoded, and
    /// the table.
    pub fn embed(&self) -> u64 {
        BASE_BYTES + self.tokens * 4 + 2 * self.chunk() + self.embeddings()
    }

    /// `layer-forward`: a chunk of X_ℓ as read and decoded, the chunk of X_{ℓ+1} and its
    /// encoding, and the layer's weights as read and packed.
    pub fn layer_forward(&self, l: usize) -> u64 {
        BASE_BYTES + 4 * self.chunk() + 3 * self.layer(l)
    }

    /// `supernet-layer`: a chunk of X as read and decoded (twice per pass at most), the layer
    /// three times, the two Hessians, and for the module being pruned (one after the other) its
    /// shared start (Hλ and its inverse, d² f64 each) plus, per level built at once (`parallel`
    /// at most), that level's working set (its copy of the inverse, the refit's kept-set block
    /// and its factor, d² f64 each at most, and the f64 weight). Measured at Llama-3.1-8B's FFN
    /// (d = 14,336, one level at a time): 13.3 GB of RSS against 13.5 GB here
    /// (`scripts/bench_8b_shape.sh`); counting only 3·d² a level gave 10.3 GB, and the run was
    /// killed for memory beside another process.
    pub fn supernet_layer(
        &self,
        l: usize,
        attn_levels: usize,
        ffn_levels: usize,
        parallel: usize,
    ) -> u64 {
        let d = &self.cfg.layers[l];
        let h = self.hidden();
        let da = (d.n_q * self.cfg.head_dim) as u64;
        let df = d.d_ff as u64;
        let level = |dim: u64| 3 * dim * dim * 8 + h * dim * 8;
        let module = |levels: usize, dim: u64| match levels {
            0 => 0,
            n => 2 * dim * dim * 8 + (n.min(parallel.max(1)) as u64) * level(dim),
        };
        let obs = module(attn_levels, da).max(module(ffn_levels, df));
        BASE_BYTES + 4 * self.chunk() + 3 * self.layer(l) + (da * da + df * df) * 8 + obs
    }

    /// `supernet-part`: as `supernet-layer` for one module's share of levels.
    pub fn supernet_part(
        &self,
        l: usize,
        module: ModuleKind,
        levels: usize,
        parallel: usize,
    ) -> u64 {
        match module {
            ModuleKind::Attn => self.supernet_layer(l, levels, 0, parallel),
            ModuleKind::Ffn => self.supernet_layer(l, 0, levels, parallel),
        }
    }

    /// The `supernet-layer` that joins parts: the layer three times, every variant as read and
    /// as written (each at most the module's dense width, f32), no X.
    pub fn supernet_join(&self, l: usize, attn_levels: usize, ffn_levels: usize) -> u64 {
        let d = &self.cfg.layers[l];
        let h = self.hidden();
        let da = (d.n_q * self.cfg.head_dim) as u64;
        let variants = attn_levels as u64 * h * da + ffn_levels as u64 * h * d.d_ff as u64;
        BASE_BYTES + 3 * self.layer(l) + 2 * variants * 4
    }

    /// `baseline-layer`: Wanda-sp runs the layer over X like a forward; magnitude only reads
    /// the weights.
    pub fn baseline_layer(&self, l: usize, reads_x: bool) -> u64 {
        if reads_x {
            self.layer_forward(l)
        } else {
            BASE_BYTES + 3 * self.layer(l)
        }
    }

    /// `teacher-topk`, layer by layer over groups of shards: the vocabulary tables (embeddings,
    /// head and its packed copy), the largest layer three times (read, packed, in use), one
    /// group's hidden states twice (`teacher::GROUP_BYTES` at most, and a layer's output beside
    /// its input), one batch of logits with its top-k, and one shard as built and encoded.
    pub fn teacher(&self) -> u64 {
        let group = (crate::stages::teacher::GROUP_BYTES as u64).min(self.x());
        BASE_BYTES
            + 3 * self.embeddings()
            + 3 * self.largest_layer()
            + 2 * group
            + 2 * self.logits(TEACHER_TOKENS)
            + 2 * self.teacher_shard()
    }

    /// One shard of the teacher's output (`stages::teacher`: ~32 MiB, at least one batch).
    fn teacher_shard(&self) -> u64 {
        let batch = TEACHER_TOKENS * self.top_k.min(self.cfg.vocab_size as u64) * 8;
        (32u64 << 20).max(batch).min(self.teacher_record())
    }

    /// The teacher's rows of a minibatch of `tokens`.
    fn teacher_rows(&self, tokens: u64) -> u64 {
        tokens * self.top_k.min(self.cfg.vocab_size as u64) * 8
    }

    /// `search` (layer-major, `supernet::scorer`): embeddings and head (twice when untied and
    /// packed: counted as two tables); the dense layers when they all fit a quarter of the
    /// cache budget, else one; assembled blocks within another quarter plus two (the parent's
    /// and the one in use); the hidden states of a wave of candidates and the parent
    /// (within half the budget, two at least) at the largest minibatch; that minibatch's
    /// teacher rows and the shard they are cut from; one batch of logits.
    pub fn search(&self, cache_limit_bytes: u64, selection_tokens: &[u64], offspring: u64) -> u64 {
        let largest = self.largest_layer();
        let decoder = self.cfg.decoder_params() as u64 * 4;
        let dense = if decoder <= cache_limit_bytes / 4 {
            decoder
        } else {
            largest
        };
        let candidates = offspring + 1;
        let blocks = (cache_limit_bytes / 4).min(decoder * candidates) + 2 * largest;
        let top = selection_tokens.iter().copied().max().unwrap_or(0);
        let state = top * self.hidden() * 4;
        let states = (cache_limit_bytes / 2)
            .max(2 * state)
            .min(candidates * state + state);
        BASE_BYTES
            + 2 * self.embeddings()
            + dense
            + blocks
            + states
            + self.teacher_rows(top)
            + 2 * self.teacher_shard()
            + self.logits(PASS_TOKENS)
    }

    /// `eval-ppl` and `eval-tasks`, layer by layer: embeddings and head, the largest layer three times (the
    /// dense weights, its variants and the assembled block), one group of windows' hidden
    /// states (`eval_ppl::GROUP_BYTES` at most) and one chunk of logits with its log-softmax
    /// (zero-shot scoring takes its logits in the same chunks).
    pub fn eval(&self) -> u64 {
        let largest = self.largest_layer();
        let chunk = crate::eval::perplexity::LOGIT_ROWS_PER_CHUNK as u64;
        BASE_BYTES
            + 2 * self.embeddings()
            + 3 * largest
            + super::eval_ppl::GROUP_BYTES as u64
            + 2 * self.logits(chunk)
    }

    /// `export`: both writers take one tensor at a time (the safetensors writer from the lazy
    /// sliced source, the GGUF writer one layer's weights at a time), and the files move into
    /// the store without being read back. So: the largest layer three times (the dense weights
    /// as read, its chosen variants, the sliced tensors) and the largest tensor, a vocabulary
    /// table, twice while it is converted and written.
    pub fn export(&self) -> u64 {
        BASE_BYTES + 3 * self.largest_layer() + 2 * self.embeddings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LayerDims;

    fn llama8b(layers: usize) -> ModelConfig {
        ModelConfig {
            hidden_size: 4096,
            head_dim: 128,
            vocab_size: 128_256,
            layers: vec![LayerDims::dense(32, 8, 14_336); layers],
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            max_position_embeddings: 131_072,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn estimates_grow_with_the_tokens_and_the_model_as_the_code_holds_them() {
        let cfg = llama8b(32);
        let s = |tokens| Shapes {
            cfg: &cfg,
            tokens,
            top_k: 8192,
            eval_seq_len: 4096,
            chunk_bytes: 256 << 20,
        };
        let (small, paper) = (s(262_144), s(4 << 20));
        // X at the paper's 4M tokens is 64 GiB; a layer stage holds a few 256 MiB chunks of
        // it, so its estimate does not grow with the tokens.
        assert_eq!(paper.x(), 64 << 30);
        assert_eq!(paper.chunk(), 256 << 20);
        assert_eq!(small.layer_forward(0), paper.layer_forward(0));
        assert!(paper.layer_forward(0) < 4 << 30);
        // The teacher record at top-k 8192 is 4M × 8192 × 8 B = 256 GiB; the stage holds a
        // shard of it, so its estimate does not grow with the tokens either.
        assert_eq!(paper.teacher_record(), 256 << 30);
        assert_eq!(small.teacher(), paper.teacher());
        // It runs one decoder layer at a time, so it does not hold the model either, and more
        // layers do not add to it.
        assert!(paper.teacher() < paper.model() / 2);
        let deeper = llama8b(80);
        let deeper = Shapes {
            cfg: &deeper,
            ..s(4 << 20)
        };
        assert_eq!(deeper.teacher(), paper.teacher());
        // Past a 4 GiB cache budget the search holds one dense layer, not the model: its
        // estimate does not grow with the layer count (the teacher's rows of the 131k-token
        // minibatch, 8.6 GB, are the largest part).
        let sel = [2048, 16_384, 131_072];
        let deep = llama8b(80);
        let deep = Shapes {
            cfg: &deep,
            ..s(4 << 20)
        };
        assert_eq!(
            deep.search(4 << 30, &sel, 128),
            paper.search(4 << 30, &sel, 128)
        );
        assert!(paper.search(4 << 30, &sel, 128) < paper.model());
        assert_eq!(
            small.search(4 << 30, &[2048], 128),
            s(65_536).search(4 << 30, &[2048], 128)
        );
        // Export and eval do not depend on the token count; export streams, so it holds a
        // layer, not the model.
        assert_eq!(small.export(), paper.export());
        assert!(paper.export() < paper.model() / 4);
        assert_eq!(small.eval(), paper.eval());
    }
}
