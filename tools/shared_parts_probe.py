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
import os

from ties_probe import DOMAINS, Experts  # the same experts, test windows and oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    experts = Experts(args.experts)
    print("| from the own expert | " + " | ".join(DOMAINS) + " |")
    print("|---" * (len(DOMAINS) + 1) + "|")
    for group, own_part in GROUPS.items():
        mixed = lambda d: {n: experts.weights[d][n] if own_part(n) else experts.average[n] for n in experts.shared_names}
        print(f"| {group} | {experts.oracle(mixed)} |", flush=True)


if __name__ == "__main__":
    main()
