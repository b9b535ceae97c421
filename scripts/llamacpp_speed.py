#!/usr/bin/env python3
"""Prefill and greedy-decode tokens/s of a GGUF in llama.cpp (through llama-cpp-python), the
counterpart of `tyr bench decode`: a prompt of P deterministic token ids evaluated in one batch,
then N tokens generated one at a time; medians of ITERS timed repetitions after one warm-up.

    /path/venv/bin/python scripts/llamacpp_speed.py MODEL.gguf [P [N [ITERS [THREADS]]]]

Prints one JSON object.
"""
import ctypes
import json
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama, llama_cpp


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    p = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    iters = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    llm = Llama(model_path=path, n_ctx=p + n + 8, n_batch=p, n_ubatch=p, verbose=False,
                n_threads=threads, n_threads_batch=threads, seed=0)
    vocab = llm.n_vocab()
    prompt = [(i * 2654435761 + 12345) % vocab for i in range(p)]
    pre, dec = [], []
    for it in range(iters + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(n):
            # The last position's logits straight from the context (only it is computed).
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (vocab,))
            llm.eval([int(row.argmax())])
        t2 = time.perf_counter()
        if it > 0:
            pre.append(t1 - t0)
            dec.append(t2 - t1)
    pm, dm = statistics.median(pre), statistics.median(dec)
    print(json.dumps({
        "model": path,
        "architecture": llm.metadata.get("general.architecture"),
        "threads": threads,
        "prompt_tokens": p,
        "new_tokens": n,
        "prefill_tokens_per_s": p / pm,
        "decode_tokens_per_s": n / dm,
    }))


if __name__ == "__main__":
    main()
