#!/usr/bin/env python3
"""Writes small multiple-choice task files in the layouts of the Hugging Face datasets that
lm-eval-harness reads (ARC, OpenBookQA, HellaSwag, PIQA, WinoGrande, BoolQ, LAMBADA) and tyr's
generic JSONL, built from the sentences of plain-text files.

The items are not a benchmark: they exist to check that `tyr eval --tasks` and lm-eval score
the same requests the same way (scripts/lm_eval_compare/run.sh). Each file exercises its format's
preprocessing: HellaSwag's `[title]` and bracket removal and `capitalize`, OpenBookQA's answer
key with a leading space, WinoGrande's `_` blank and string answers, BoolQ's 0/1 label.

    python3 make_tasks.py OUT_DIR TEXT [TEXT...] [--items N] [--seed S]

Only the standard library; the same TEXTs, N and S give the same files.
"""

import argparse
import json
import random
import re
from pathlib import Path


def sentences(text):
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?;])\s+", text):
        words = s.split(" ")
        if 8 <= len(words) <= 40 and not any(c.isdigit() for c in s):
            out.append(s.strip())
    return out


def split_half(s):
    w = s.split(" ")
    k = len(w) // 2
    return " ".join(w[:k]), " ".join(w[k:])


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("texts", nargs="+")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sents = []
    for t in a.texts:
        sents += sentences(Path(t).read_text(encoding="utf-8", errors="replace"))
    rng = random.Random(a.seed)
    rng.shuffle(sents)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    n = a.items
    # Every task takes its own sentences: lm-eval reuses one request's logits for another whose
    # context + continuation (less its last token) is the same token sequence, so two tasks that
    # split the same sentence differently would be scored from each other's forward.
    tasks = ["arc", "obqa", "hs", "piqa", "wino", "boolq", "lamb", "gen"]
    own = {t: sents[k * n:(k + 1) * n] for k, t in enumerate(tasks)}
    others = sents[len(tasks) * n:]
    if len(others) < n:
        raise SystemExit(f"{a.texts}: {len(sents)} usable sentences, need {(len(tasks) + 1) * n}")

    def distractors(k):
        return [split_half(rng.choice(others))[1] for _ in range(k)]

    def four_choices(s):
        head, tail = split_half(s)
        choices = distractors(3)
        gold = rng.randrange(4)
        choices.insert(gold, tail)
        return head, tail, choices, gold

    arc, obqa, hs, piqa, wino, boolq, lamb, gen = [], [], [], [], [], [], [], []
    for i in range(n):
        head, tail, choices, gold = four_choices(own["arc"][i])
        labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3", "4"]
        arc.append({
            "id": f"arc-{i}",
            "question": head,
            "choices": {"text": choices, "label": labels},
            "answerKey": labels[gold],
        })
        head, tail, choices, gold = four_choices(own["obqa"][i])
        obqa.append({
            "id": f"obqa-{i}",
            "question_stem": head,
            "choices": {"text": choices, "label": ["A", "B", "C", "D"]},
            "answerKey": (" " if i % 4 == 0 else "") + "ABCD"[gold],
        })
        head, tail, choices, gold = four_choices(own["hs"][i])
        w = head.split(" ")
        k = max(1, len(w) // 2)
        ctx_a, ctx_b = " ".join(w[:k]), " ".join(w[k:])
        if i % 5 == 0:
            ctx_a = ctx_a + " [title] Step one"
        if i % 7 == 0:
            ctx_b = ctx_b + " [header]"
        endings = [c + (" [substeps]" if j == 1 and i % 3 == 0 else "") for j, c in enumerate(choices)]
        hs.append({
            "ind": i,
            "activity_label": "Reading" if i % 2 else "Old prose",
            "ctx_a": ctx_a,
            "ctx_b": ctx_b.upper() if i % 6 == 0 else ctx_b,
            "ctx": ctx_a + " " + ctx_b,
            "endings": endings,
            "source_id": "made",
            "split": "val",
            "split_type": "indomain",
            "label": str(gold),
        })
        head, tail = split_half(own["piqa"][i])
        g2 = rng.randrange(2)
        sols = [tail, distractors(1)[0]] if g2 == 0 else [distractors(1)[0], tail]
        piqa.append({"goal": head, "sol1": sols[0], "sol2": sols[1], "label": g2})
        # WinoGrande: blank out one longer word; the other option is a word from elsewhere.
        s = own["wino"][i]
        cand = [j for j, x in enumerate(s.split(" ")) if len(x) >= 5 and x.isalpha()]
        if cand:
            j = rng.choice(cand)
            ws = s.split(" ")
            right = ws[j]
            wrong = rng.choice([x for x in rng.choice(others).split(" ") if x.isalpha()] or ["thing"])
            ws[j] = "_"
            ans = rng.randrange(2)
            opts = [right, wrong] if ans == 0 else [wrong, right]
            wino.append({
                "sentence": " ".join(ws),
                "option1": opts[0],
                "option2": opts[1],
                "answer": str(ans + 1),
            })
        s = own["boolq"][i]
        word = rng.choice([x for x in s.split(" ") if x.isalpha()] or ["the"])
        other = rng.choice(others)
        passage = s if rng.randrange(2) else other
        boolq.append({
            "question": f"does the passage use the word {word.lower()}",
            "passage": passage,
            "idx": i,
            "label": int(word in passage.split(" ")),
        })
        lamb.append({"text": own["lamb"][i] + " " + own["lamb"][(i + 1) % n]})
        head, tail, choices, gold = four_choices(own["gen"][i])
        gen.append({"context": head, "choices": choices, "gold": gold})

    write(out / "arc_easy.jsonl", arc)
    write(out / "openbookqa.jsonl", obqa)
    write(out / "hellaswag.jsonl", hs)
    write(out / "piqa.jsonl", piqa)
    write(out / "winogrande.jsonl", wino)
    write(out / "boolq.jsonl", boolq)
    write(out / "lambada.jsonl", lamb)
    write(out / "generic.jsonl", gen)
    print(f"{n} items per task from {len(sents)} sentences into {out}")


if __name__ == "__main__":
    main()
