# Reads an exported tyr model folder with transformers' AutoConfig (5.24+, which knows
# `per_layer_config`) and compares every layer's head and channel counts with the per-layer lists
# tyr wrote in the `pruning` object (EXPORT.md "Saved format"). Needs only transformers, no torch.
# usage: transformers_config_check.py MODEL_DIR      (exit 1 on any mismatch)
import json, sys
from transformers import AutoConfig

d = sys.argv[1]
p = json.load(open(f"{d}/config.json"))["pruning"]
cfg = AutoConfig.from_pretrained(d)
mismatches = 0
for l in range(cfg.num_hidden_layers):
    lc = cfg.per_layer_config[l]
    skip = set(getattr(lc, "skip", None) or [])
    got = (
        0 if "self_attn" in skip else lc.num_attention_heads,
        0 if "self_attn" in skip else lc.num_key_value_heads,
        0 if "mlp" in skip else lc.intermediate_size,
    )
    want = (
        p["num_attention_heads_per_layer"][l],
        p["num_key_value_heads_per_layer"][l],
        p["intermediate_size_per_layer"][l],
    )
    if got != want:
        mismatches += 1
        print(f"layer {l}: transformers {got}, tyr {want}")
print(
    f"{type(cfg).__name__}: {cfg.num_hidden_layers} layers, "
    f"heterogeneous={cfg.is_heterogeneous}, {mismatches} mismatches"
)
sys.exit(1 if mismatches else 0)
