# PyTorch reference for `tyr bench forward`: LlamaForCausalLM with SmolLM2-135M dims, random
# init, f32, inference_mode; tokens/s of a full forward at seq 512, batch 1 and 8.
import json, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM

seq = int(sys.argv[1]) if len(sys.argv) > 1 else 512
batches = [int(b) for b in (sys.argv[2] if len(sys.argv) > 2 else "1,8").split(",")]
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 3
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                  rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                  tie_word_embeddings=True, torch_dtype="float32")
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).float().eval()
out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": []}
with torch.inference_mode():
    for b in batches:
        ids = torch.randint(0, 49152, (b, seq))
        for logits in (False, True):
            run = (lambda: model(ids)) if logits else (lambda: model.model(ids))
            run()
            ts, cs = [], []
            for _ in range(iters):
                t, c = time.perf_counter(), time.process_time()
                run()
                ts.append(time.perf_counter() - t); cs.append(time.process_time() - c)
            ts.sort(); cs.sort()
            med, cmed = ts[len(ts) // 2], cs[len(cs) // 2]
            out["results"].append({"batch": b, "seq_len": seq, "logits": logits, "median_s": med,
                                   "min_s": ts[0], "tokens_per_s": b * seq / med,
                                   "median_cpu_s": cmed, "tokens_per_cpu_s": b * seq / cmed})
print(json.dumps(out))
