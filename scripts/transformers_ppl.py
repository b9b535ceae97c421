# Reference perplexity (ALGORITHM.md §11) with transformers on the SmolLM2 GGUF, f32.
# usage: transformers_ppl.py GGUF_DIR GGUF_NAME TEXT_FILE SEQ_LEN MAX_TOKENS [IDS_JSON]
import sys, json, math, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, name, text_path, S, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ids_path = sys.argv[6] if len(sys.argv) > 6 else None
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
text = open(text_path, encoding="utf-8").read()
hf_ids = tok(text, add_special_tokens=False)["input_ids"]
if ids_path:
    ids = json.load(open(ids_path))
    n = min(len(ids), len(hf_ids))
    diff = next((i for i in range(n) if ids[i] != hf_ids[i]), None)
    print(json.dumps({"tyr_ids": len(ids), "hf_ids": len(hf_ids), "first_diff": diff}))
else:
    ids = hf_ids
ids = ids[:max_tokens]
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
model.eval()
W = len(ids) // S
nll = 0.0
with torch.no_grad():
    for i in range(W):
        x = torch.tensor([ids[i*S:(i+1)*S]])
        out = model(x, labels=x)
        nll += out.loss.double().item()
        print("window", i, out.loss.item(), file=sys.stderr)
print(json.dumps({"perplexity": math.exp(nll / W), "windows": W, "seq_len": S, "tokens": W * S}))
