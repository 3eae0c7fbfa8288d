"""Can the whole pretrained base do the lookup by itself? For the first N val chains of a run, the next token the
full base (all its layers) predicts after the prompt and template, against the first pointer and the answer; and
the same restricted to the words of the prompt's statements.

    python benchmarks/base_zero_shot.py RUN [--n 100]

Measured on runs/probe/t128-h1 (1-hop backward chains, 2 distractors): first pointer 0/100, restricted 3/100 (the
base picks the queried name itself). Not a test.
"""

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlf.base import embedded_gguf_path, load_tokenizer
from rlf.cache import apply_template
from rlf.config import read_run_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    cfg = read_run_config(args.run)
    gguf = embedded_gguf_path()
    tok = load_tokenizer(cfg.base)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (Path(args.run) / "val.jsonl").read_text().splitlines()][: args.n]
    first = lambda w: tok(" " + w).input_ids[0]  # noqa: E731
    hits = {"pointer": 0, "answer": 0, "pointer_in_prompt": 0, "answer_in_prompt": 0}
    for r in rows:
        ids = tok(apply_template(cfg.template, r["prompt"]), return_tensors="pt").input_ids
        with torch.inference_mode():
            logits = model(ids).logits[0, -1]
        top = tok.decode([int(logits.argmax())]).strip()
        words = set(re.findall(r"[A-Za-z]+", r["prompt"].rsplit("What", 1)[0]))
        best = max(words, key=lambda w: logits[first(w)].item())
        hits["pointer"] += top == r["targets"][0]
        hits["answer"] += top == r["answer"]
        hits["pointer_in_prompt"] += best == r["targets"][0]
        hits["answer_in_prompt"] += best == r["answer"]
    print({k: f"{v}/{len(rows)}" for k, v in hits.items()})


if __name__ == "__main__":
    main()
