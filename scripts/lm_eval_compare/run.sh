#!/usr/bin/env bash
# Scores the same model on the same local task files with `tyr eval --tasks` and with
# lm-eval-harness, and prints how often they choose the same answer (issue 13's check).
#
#   scripts/lm_eval_compare/run.sh MODEL WORK [ITEMS] -- TEXT [TEXT...]
#
# MODEL: any model tyr reads (a GGUF is converted to our saved format first, which
# transformers loads as a Llama model). TEXTs: plain-text files the items are made from.
# Needs: target/release/tyr and target/release/examples/convert_f32
# (`cargo build --release --examples`), and $PYTHON with lm-eval 0.4.13, torch and transformers
# (`python3 -m venv V && V/bin/pip install lm-eval==0.4.13 torch transformers`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=${1:?model}; work=${2:?work dir}; shift 2
items=200
if [[ ${1:-} != "--" ]]; then items=${1:?items}; shift; fi
[[ ${1:-} == "--" ]] || { echo "usage: run.sh MODEL WORK [ITEMS] -- TEXT [TEXT...]" >&2; exit 2; }
shift
PYTHON=${PYTHON:-python3}
TYR=${TYR:-$root/target/release/tyr}
CONVERT=${CONVERT:-$root/target/release/examples/convert_f32}
mkdir -p "$work"
work=$(cd "$work" && pwd)

if [[ -d $model ]]; then dir=$model; else
  "$CONVERT" "$model" "$work/converted" > /dev/null
  dir=$work/converted/saved
fi
python3 "$here/make_tasks.py" "$work/tasks" "$@" --items "$items"
mkdir -p "$work/yaml"
for f in "$here"/tasks/*; do
  sed "s#TASK_DIR#$work/tasks#" "$f" > "$work/yaml/$(basename "$f")"
done

names=(arc_easy openbookqa hellaswag piqa winogrande boolq lambada generic)
specs=()
for n in "${names[@]}"; do specs+=("${n//_/-}=$work/tasks/$n.jsonl"); done
( IFS=,; /usr/bin/time -f "tyr eval: %e s, %M KiB" "$TYR" eval --model "$dir" \
    --tasks "${specs[*]}" --json --per-example > "$work/tyr.json" )

lm_tasks=$(printf 'cmp_%s,' "${names[@]}"); lm_tasks=${lm_tasks%,}
/usr/bin/time -f "lm-eval: %e s, %M KiB" "$PYTHON" -m lm_eval --model hf \
  --model_args "pretrained=$dir,dtype=float32,add_bos_token=False" \
  --tasks "$lm_tasks" --include_path "$work/yaml" --device cpu --batch_size 16 \
  --log_samples --output_path "$work/lmeval" > "$work/lmeval.log" 2>&1 \
  || { tail -30 "$work/lmeval.log"; exit 1; }

python3 "$here/compare.py" "$work/tyr.json" "$work/lmeval"
