#!/usr/bin/env python3
"""Checks a GGUF written by tyr's export in a real llama.cpp (through llama-cpp-python): it must
load, generate, and give the same perplexity as `tyr eval` on the same token ids (ALGORITHM.md
§11: no BOS, non-overlapping windows of S tokens, each scored on its S-1 next-token predictions,
log-softmax in float64 here, ppl = exp(mean NLL)).

Not part of `cargo test` (CI has no llama.cpp). Run by hand:

    python3 -m venv /path/venv && /path/venv/bin/pip install llama-cpp-python numpy
    cargo run --example export_pruned_demo -- MODEL.gguf OUT TEXT 2048
    /path/venv/bin/python scripts/llamacpp_check.py OUT/pruned.gguf OUT/tokens.json 512 [TYR_PPL]

Prints one JSON object; with TYR_PPL it also prints the relative difference and exits 1 when it
is above 1%.
"""
import json
import math
import sys

import numpy as np
from llama_cpp import Llama, llama_cpp


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    path, tokens_path, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tyr_ppl = float(sys.argv[4]) if len(sys.argv) > 4 else None
    tokens = json.load(open(tokens_path))
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        sys.exit(f"{len(tokens)} tokens: not one window of {seq_len}")

    llm = Llama(model_path=path, n_ctx=seq_len, n_batch=seq_len, n_ubatch=seq_len,
                logits_all=True, verbose=False, n_threads=2, seed=0)
    arch = llm.metadata.get("general.architecture")

    nll = 0.0
    for w in range(n_windows):
        win = tokens[w * seq_len:(w + 1) * seq_len]
        llm.reset()
        llm.eval(win)
        logits = np.asarray(llm.scores[:seq_len], dtype=np.float64)
        logits = logits[:-1]
        m = logits.max(axis=1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        picked = logits[np.arange(seq_len - 1), win[1:]]
        nll += float((logz - picked).sum())
    predictions = n_windows * (seq_len - 1)
    ppl = math.exp(nll / predictions)

    # Generation: greedy continuation of the first 16 tokens of the text.
    llm.reset()
    prompt = tokens[:16]
    out = []
    for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if len(out) == 16:
            break
    text = llm.detokenize(out).decode("utf-8", errors="replace")

    result = {
        "model": path,
        "architecture": arch,
        "llama_cpp_python": __import__("llama_cpp").__version__,
        "seq_len": seq_len,
        "windows": n_windows,
        "predictions": predictions,
        "perplexity": ppl,
        "mean_nll": nll / predictions,
        "generated_ids": out,
        "generated_text": text,
    }
    if tyr_ppl is not None:
        result["tyr_perplexity"] = tyr_ppl
        result["relative_difference"] = abs(ppl - tyr_ppl) / tyr_ppl
    print(json.dumps(result, indent=1))
    if tyr_ppl is not None and result["relative_difference"] > 0.01:
        sys.exit(1)


if __name__ == "__main__":
    main()
