#!/usr/bin/env python3
"""Check that `dume export` writes a Mixtral checkpoint that transformers loads and runs.

Merges the four bundled experts with tests/fixtures/export/merge.yaml (routers without a
bias, top-2, temperature 0.5), exports the MoE in both layouts (transformers 5's fused expert
tensors and the original per-expert w1/w2/w3), loads each with transformers'
MixtralForCausalLM in float32 and runs it on 32 bytes from each domain's test text. Writes
tests/fixtures/export/reference.safetensors (tokens, logits of the fused export) and prints how
far the layouts, and transformers' own bf16 compute, are from each other.

tests/commands/test_export.cpp merges and exports the same MoE, runs dume's MoE forward pass and the
exported checkpoint through dume, and compares both against these logits.

Needs torch and transformers from PyPI; CI does not run it. Usage (after building dume):
    python3 tools/check_mixtral_export.py [--dume build/dume]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import MixtralForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "export")
DOMAINS = ["c", "python", "prose", "roff"]
TOKENS = 32


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def tokens() -> torch.Tensor:
    rows = []
    for d in DOMAINS:
        with open(os.path.join(ROOT, "experts", "data", f"{d}.test.bin"), "rb") as f:
            rows.append(list(f.read(TOKENS)))
    return torch.tensor(rows, dtype=torch.int64)


def logits(model_dir: str, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    model, info = MixtralForCausalLM.from_pretrained(model_dir, dtype=dtype, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:  # a missing tensor would be initialized at random, silently
        raise SystemExit(f"{model_dir}: transformers did not load every tensor exactly: {problems}")
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dume", default=os.path.join(ROOT, "build", "dume"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        moe = os.path.join(tmp, "moe")
        config = os.path.join(tmp, "merge.yaml")
        with open(os.path.join(FIXTURE, "merge.yaml")) as f:
            text = f.read().replace("../../../", ROOT + "/").replace(ROOT + "/build/export-fixture/moe", moe)
        with open(config, "w") as f:
            f.write(text)
        run(args.dume, "merge", config)
        fused, legacy = os.path.join(tmp, "fused"), os.path.join(tmp, "per-expert")
        run(args.dume, "export", moe, "--output", fused)
        run(args.dume, "export", moe, "--output", legacy, "--layout", "per-expert")
        run(args.dume, "inspect", fused)

        ids = tokens()
        reference = logits(fused, ids, torch.float32)
        per_expert = logits(legacy, ids, torch.float32)
        native_bf16 = logits(fused, ids, torch.bfloat16)

    save_file({"tokens": ids, "logits": reference.contiguous()}, os.path.join(FIXTURE, "reference.safetensors"),
              metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"logits {tuple(reference.shape)}, max |logit| {float(reference.abs().max()):.3f}")
    print(f"per-expert layout vs fused: max rel diff {rel(per_expert, reference):.3e}")
    print(f"transformers computing in bf16 vs f32: max rel diff {rel(native_bf16, reference):.3e}")
    if rel(per_expert, reference) > 1e-6:
        print("error: the two layouts load to different models", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
