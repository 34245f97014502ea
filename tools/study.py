#!/usr/bin/env python3
"""The training-free design space on the bundled experts: shared weights x router x routing mode x k.

For each shared-weight strategy and router it merges the four bundled experts (configs/demo.yaml
with `shared:` and `router:` replaced) and runs `dume eval` with every routing mode and k, plus
the experts and the oracle (each domain forced to its own expert: the best any router can do with
those shared weights). The paper's recipe (averaged shared weights, the ridge router at lambda
1e-2, token routing, k = 1) is the first row. The routers other than the paper's choose lambda and
the temperature on a 10 % held-out split (`lambda: auto`, `temperature: auto`). It writes one table
(retention = ppl(own expert) / ppl(configuration), per domain) as Markdown and one PNG heatmap.
Three more runs keep each expert's own attention (router.expert_attention, routing mean+layer:0).

Usage (after building dume; about 10 minutes on 2 cores):
    python3 tools/study.py [--dume build/pipeline/dume] [--out build/study] [--test-sequences 64]

Needs matplotlib for the PNG (Debian: python3-matplotlib); CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> the merge config's `shared:` value (paths relative to the study directory's configs)
STRATEGIES = {
    "average": "average",
    "regmean": "regmean",
    "base": "{checkpoint: EXPERTS/base}",
    "task 0.5": "{checkpoint: EXPERTS/base, scale: 0.5}",
    "task-regmean 0.75": "{checkpoint: EXPERTS/base, scale: 0.75, combine: regmean}",
}
# name -> (the merge config's `router:`, its `calibration:` additions)
TUNED = "lambda: auto, temperature: auto, context_tokens: 256"
ROUTERS = {
    "ridge": (f"{{method: dume, {TUNED}}}", ", heldout_fraction: 0.1"),
    "gaussian": (f"{{method: gaussian, {TUNED}}}", ", heldout_fraction: 0.1"),
}
PAPER = ("average", "paper", "{method: dume, lambda: 1.0e-2, temperature: 1.0, context_tokens: 256}", "")
# Each expert's own attention too (router.expert_attention), mixed by one decision at layer 0.
ATTENTION_ROUTING = "mean+layer:0"
EXPERT_ATTENTION = [(strategy, "gaussian") for strategy in ("average", "regmean", "task-regmean 0.75")]
ROUTING = ["token", "mean", "ema:0.1", "mean+layer:0"]
TOP_K = [1, 2]


def config_for(strategy: str, router: str, calibration: str, out: str, test_sequences: int,
               routings: list[str] = ROUTING) -> str:
    with open(os.path.join(ROOT, "configs", "demo.yaml")) as f:
        text = f.read()
    experts = os.path.join(ROOT, "experts")
    text = text.replace("../experts", experts)
    shared = STRATEGIES[strategy].replace("EXPERTS", experts)
    text = re.sub(r"^shared: .*$", f"shared: {shared}", text, flags=re.M)
    text = re.sub(r"^router: .*$", f"router: {router}", text, flags=re.M)
    text = re.sub(r"^(calibration: \{.*)\}$", lambda m: m.group(1) + calibration + "}", text, flags=re.M)
    text = re.sub(r"^output: .*$", f"output: {out}/moe", text, flags=re.M)
    routing = ", ".join(f'"{r}"' for r in routings)
    text = re.sub(r"^eval: .*$", f"eval: {{methods: [dume, experts, oracle], top_k: {TOP_K}, routing: [{routing}], "
                  f"output: {out}/eval, max_sequences: {test_sequences}}}", text, flags=re.M)
    return text


def method_name(routing: str, k: int, first_routing: str = ROUTING[0]) -> str:
    return "dume" + ("" if routing == first_routing else f"[{routing}]") + ("" if k == TOP_K[0] else f"@k={k}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dume", default=os.path.join(ROOT, "build", "pipeline", "dume"))
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "study"))
    parser.add_argument("--test-sequences", type=int, default=64, help="test windows per domain")
    args = parser.parse_args()

    rows = []  # (label, {domain: retention})
    domains = None
    runs = [PAPER] + [(strategy, router, *ROUTERS[router]) for strategy in STRATEGIES for router in ROUTERS]
    runs += [(strategy, router + " + expert attention",
              ROUTERS[router][0][:-1] + f", routing: {ATTENTION_ROUTING}, expert_attention: true}}", ROUTERS[router][1])
             for strategy, router in EXPERT_ATTENTION]
    for strategy, router, router_yaml, calibration in runs:
        attention = router.endswith("expert attention")
        routings = [ATTENTION_ROUTING] if attention else ROUTING
        out = os.path.join(args.out, f"{strategy}-{router}".replace(" ", "-"))
        os.makedirs(out, exist_ok=True)
        config = os.path.join(out, "study.yaml")
        with open(config, "w") as f:
            f.write(config_for(strategy, router_yaml, calibration, out, args.test_sequences, routings))
        print(f"# {strategy} / {router}", flush=True)
        subprocess.run([args.dume, "merge", config, "--force"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([args.dume, "eval", config], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "eval", "eval.json")) as f:
            result = json.load(f)
        retention = result["retention_by_method"]
        domains = list(result["experts"])
        if (strategy, router) == PAPER[:2]:
            rows.append(("average / ridge 1e-2 / token / k=1 (the paper)", retention[method_name("token", 1)]))
            rows.append(("average / oracle", retention["oracle"]))
            continue
        if attention:  # its oracle: each domain's own attention and MLPs
            rows.append((f"{strategy} + expert attention / oracle", retention["oracle"]))
        elif router == list(ROUTERS)[0] and strategy != PAPER[0]:  # the paper's run gave average's oracle
            rows.append((f"{strategy} / oracle", retention["oracle"]))
        for routing in routings:
            for k in TOP_K:
                rows.append((f"{strategy} / {router} / {routing} / k={k}", retention[method_name(routing, k, routings[0])]))

    lines = ["| shared / router / routing / k | " + " | ".join(domains) + " | min |", "|---" * (len(domains) + 2) + "|"]
    for label, values in rows:
        cells = [f"{100 * values[d]:.1f}%" for d in domains]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {100 * min(values[d] for d in domains):.1f}% |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(table)
    print(table)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG", file=sys.stderr)
        return 0
    values = [[100 * v[d] for d in domains] for _, v in rows]
    fig, ax = plt.subplots(figsize=(8, 0.24 * len(rows) + 1.2))
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=75, vmax=100)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6, color="white" if v < 90 else "black")
    fig.colorbar(image, label="retention: ppl(own expert) / ppl (%)")
    ax.set_title("Training-free configurations on the bundled experts")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "study.png"), dpi=120)
    print(f"wrote {args.out}/study.md and study.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
