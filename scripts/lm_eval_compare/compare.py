#!/usr/bin/env python3
"""Compares `tyr eval --tasks … --json --per-example` with lm-eval's `--log_samples` output on
the same task files: per task, the share of items where both choose the same answer (for acc
and acc_norm), both accuracies, and the largest difference of a log-likelihood.

    python3 compare.py TYR_JSON LMEVAL_OUTPUT_DIR
"""

import glob
import json
import math
import sys

TASKS = {  # tyr name -> lm-eval task name
    "arc-easy": "cmp_arc_easy",
    "openbookqa": "cmp_openbookqa",
    "hellaswag": "cmp_hellaswag",
    "piqa": "cmp_piqa",
    "winogrande": "cmp_winogrande",
    "boolq": "cmp_boolq",
    "lambada": "cmp_lambada",
    "generic": "cmp_generic",
}


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def continuations(row):
    args = row["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": context, "arg_1": continuation}, …}
        return [a["arg_1"] for _, a in sorted(args.items(), key=lambda kv: int(kv[0].split("_")[-1]))]
    return [a[1] for a in args]


def lm_samples(out_dir, task):
    files = sorted(glob.glob(f"{out_dir}/**/samples_{task}_*.jsonl", recursive=True))
    if not files:
        raise SystemExit(f"no lm-eval samples for {task} under {out_dir}")
    rows = [json.loads(l) for l in open(files[-1], encoding="utf-8")]
    return sorted(rows, key=lambda r: r["doc_id"])


def main():
    tyr_json, out_dir = sys.argv[1], sys.argv[2]
    tyr = json.load(open(tyr_json, encoding="utf-8"))
    results = [dict(t, name=name) for name, t in tyr["tasks"].items()]
    print("| task | items | same choice (acc) | same choice (acc_norm) | tyr acc | lm-eval acc "
          "| tyr acc_norm | lm-eval acc_norm | max abs Δ log-likelihood |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for t in results:
        lm_name = TASKS[t["name"]]
        rows = lm_samples(out_dir, lm_name)
        ex = t["examples"]
        if len(rows) != len(ex):
            raise SystemExit(f"{t['name']}: tyr scored {len(ex)} items, lm-eval {len(rows)}")
        same = same_norm = 0
        lm_acc = lm_norm = 0.0
        dmax = 0.0
        for e, r in zip(ex, rows):
            lls = [float(x[0]) for x in r["filtered_resps"]]
            for a, b in zip(e["loglikelihoods"], lls):
                dmax = max(dmax, abs(a - b))
            if t["scoring"] == "last-word":
                greedy = str(r["filtered_resps"][0][1]) == "True"
                same += greedy == all(e["greedy"])
                lm_acc += greedy
                continue
            pred = argmax(lls)
            same += pred == e["pred"]
            lm_acc += pred == e["gold"]
            if e.get("pred_norm") is not None:
                # lm-eval's acc_norm divides by the choice's length in characters, without
                # the target delimiter (one space) that starts each continuation.
                lens = [len(c) - 1 for c in continuations(r)]
                norm = argmax([ll / n for ll, n in zip(lls, lens)])
                same_norm += norm == e["pred_norm"]
                lm_norm += norm == e["gold"]
        n = len(ex)
        worst = max(worst, dmax)
        fmt = lambda x: "—" if x is None else f"{100 * x:.1f}"
        has_norm = t.get("acc_norm") is not None
        print(f"| {t['name']} | {n} | {100 * same / n:.1f}% | "
              f"{(f'{100 * same_norm / n:.1f}%') if has_norm else '—'} | {fmt(t['acc'])} | "
              f"{fmt(lm_acc / n)} | {fmt(t.get('acc_norm'))} | "
              f"{fmt(lm_norm / n) if has_norm else '—'} | {dmax:.2e} |")
    print(f"\nlargest log-likelihood difference over all tasks: {worst:.2e}")
    res = sorted(glob.glob(f"{out_dir}/**/results_*.json", recursive=True))
    lm_res = json.load(open(res[-1], encoding="utf-8"))["results"] if res else {}
    for t in results:
        if t.get("perplexity") is not None:
            lm_ppl = lm_res.get(TASKS[t["name"]], {}).get("perplexity,none")
            print(f"{t['name']} perplexity: tyr {t['perplexity']:.4f}, lm-eval {lm_ppl}")


if __name__ == "__main__":
    main()
