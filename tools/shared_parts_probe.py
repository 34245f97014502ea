#!/usr/bin/env python3
"""Which shared weights cost the bundled experts the most?

The oracle retention, ppl(own expert) / ppl(shared + own MLPs), is the ceiling of any router
for given shared weights. This script takes the shared weights averaged (the paper), then gives
back, one group at a time, that group from each domain's own expert (the rest averaged) and
measures the retention again, on the first 64 test windows of 256 bytes per domain. A group
whose return closes most of the gap is where an MoE would need per-domain weights; the README's
"Beyond the paper" quotes the table. CI does not run it (it needs torch and transformers).

Usage: python3 tools/shared_parts_probe.py [--experts experts]
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from transformers import LlamaForCausalLM

from ties_probe import perplexity, windows  # the same test windows and perplexity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ["c", "python", "prose", "roff"]
GROUPS = {  # name -> which non-MLP tensors come from the own expert
    "none (average, the paper)": lambda n: False,
    "norms": lambda n: "norm" in n,
    "embeddings": lambda n: "embed_tokens" in n,
    "LM head": lambda n: "lm_head" in n,
    "q, k": lambda n: "q_proj" in n or "k_proj" in n,
    "v, o": lambda n: "v_proj" in n or "o_proj" in n,
    "attention (q, k, v, o)": lambda n: "self_attn" in n,
    "attention + LM head": lambda n: "self_attn" in n or "lm_head" in n,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default=os.path.join(ROOT, "experts"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    load = lambda d: LlamaForCausalLM.from_pretrained(os.path.join(args.experts, d), dtype=torch.float32).eval()
    models = {d: load(d) for d in DOMAINS}
    weights = {d: models[d].state_dict() for d in DOMAINS}
    tests = {d: windows(os.path.join(args.experts, "data", f"{d}.test.bin"), 64) for d in DOMAINS}
    own = {d: perplexity(models[d], tests[d]) for d in DOMAINS}
    shared = [n for n in weights[DOMAINS[0]] if ".mlp." not in n]
    average = {n: sum(weights[d][n] for d in DOMAINS) / len(DOMAINS) for n in shared}
    print("| from the own expert | " + " | ".join(DOMAINS) + " |")
    print("|---" * (len(DOMAINS) + 1) + "|")
    for group, own_part in GROUPS.items():
        cells = []
        for d in DOMAINS:
            model = copy.deepcopy(models[d])
            state = model.state_dict()
            state.update({n: weights[d][n] if own_part(n) else average[n] for n in shared})
            model.load_state_dict(state)
            cells.append(f"{100 * own[d] / perplexity(model, tests[d]):.1f}%")
        print(f"| {group} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
