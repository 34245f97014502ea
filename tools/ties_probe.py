#!/usr/bin/env python3
"""Does TIES-style trimming earn a place among dume's shared-weight strategies?

TIES-Merging (Yadav et al., 2023) merges task vectors t_i = expert_i - base by keeping each
vector's top-k fraction of entries by magnitude, electing a sign per entry (the sign of the sum
of the trimmed vectors) and averaging only the entries that agree with it: base + lam * merged.
This script applies it to the non-MLP weights of the bundled experts and measures, against the
plain average, the oracle retention (each domain's own MLPs forced: the ceiling any router can
reach with those shared weights), ppl(own expert) / ppl(shared + own MLPs), on the first 64 test
windows of 256 bytes per domain. It is the measurement behind the README's verdict; CI does not
run it (it needs torch and transformers from PyPI).

Usage: python3 tools/ties_probe.py [--experts experts]
"""

from __future__ import annotations

import argparse
import copy
import os

import numpy as np
import torch
from transformers import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ["c", "python", "prose", "roff"]


def windows(path: str, count: int) -> torch.Tensor:
    data = np.frombuffer(open(path, "rb").read(), dtype=np.uint8)
    return torch.tensor(data[: len(data) // 256 * 256].reshape(-1, 256)[:count].astype(np.int64))


def perplexity(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(tokens).logits[:, :-1]
    return float(torch.exp(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))))


def ties(experts: dict, base: dict, keep: float, scale: float) -> dict:
    merged = {}
    for name, b in base.items():
        if ".mlp." in name:
            continue
        vectors = torch.stack([experts[d][name] - b for d in DOMAINS]).reshape(len(DOMAINS), -1)
        threshold = vectors.abs().quantile(1 - keep, dim=1, keepdim=True)
        trimmed = torch.where(vectors.abs() >= threshold, vectors, torch.zeros_like(vectors))
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        mean = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
        merged[name] = b + scale * mean.reshape(b.shape)
    return merged


class Experts:
    """The bundled experts in f32: their weights, each domain's first 64 test windows of 256 bytes,
    its own expert's perplexity on them, and the plain average of the non-MLP weights."""

    def __init__(self, directory: str):
        torch.set_num_threads(os.cpu_count() or 1)
        self.load = lambda d: LlamaForCausalLM.from_pretrained(os.path.join(directory, d), dtype=torch.float32).eval()
        self.models = {d: self.load(d) for d in DOMAINS}
        self.weights = {d: self.models[d].state_dict() for d in DOMAINS}
        self.tests = {d: windows(os.path.join(directory, "data", f"{d}.test.bin"), 64) for d in DOMAINS}
        self.own = {d: perplexity(self.models[d], self.tests[d]) for d in DOMAINS}
        self.shared_names = [n for n in self.weights[DOMAINS[0]] if ".mlp." not in n]
        self.average = {n: sum(self.weights[d][n] for d in DOMAINS) / len(DOMAINS) for n in self.shared_names}

    def oracle(self, shared_for) -> str:
        """Each domain's oracle retention (its own expert with shared_for(domain) in place of the
        non-MLP weights), as Markdown table cells."""
        cells = []
        for d in DOMAINS:
            model = copy.deepcopy(self.models[d])
            state = model.state_dict()
            state.update(shared_for(d))
            model.load_state_dict(state)
            cells.append(f"{100 * self.own[d] / perplexity(model, self.tests[d]):.1f}%")
        return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default=os.path.join(ROOT, "experts"))
    args = parser.parse_args()
    experts = Experts(args.experts)
    base = experts.load("base").state_dict()
    print("| shared weights | " + " | ".join(DOMAINS) + " |")
    print("|---" * (len(DOMAINS) + 1) + "|")
    print(f"| average | {experts.oracle(lambda d: experts.average)} |")
    for keep, scale in [(0.2, 1.0), (0.2, 0.7), (0.5, 1.0)]:
        merged = ties(experts.weights, base, keep, scale)
        print(f"| TIES, top {int(100 * keep)}%, lambda {scale} | {experts.oracle(lambda d: merged)} |", flush=True)


if __name__ == "__main__":
    main()
