#!/usr/bin/env python3
"""Generate tiny Llama-family reference checkpoints and Hugging Face reference outputs.

For each variant this script builds a tiny randomly initialised causal LM with
Hugging Face ``transformers`` (Llama, Qwen2, Qwen3 and Mistral architectures), saves it
with ``save_pretrained`` (safetensors, one of them sharded) under
``<out>/<variant>/`` and writes ``<out>/<variant>/reference.safetensors`` with
the token ids fed to the model, the float32 logits that ``transformers``
computes for them, the per-layer inputs of the MLP (output of
``post_attention_layernorm``) and, for bf16/f16 checkpoints, the logits of a
run in the checkpoint's own dtype.  dume's C++ tests load the checkpoints and
compare their forward pass against these references.

The fixtures are committed to the repository.  CI does NOT run this script: it
needs ``torch`` and ``transformers`` (plus ``safetensors`` and ``numpy``) from
PyPI.  Everything is seeded, so re-running it with the same library versions
reproduces the same files.

Usage:
    python3 tools/make_reference_fixtures.py [--out tests/fixtures/models]
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

BATCH = 2
SEQ = 24
VOCAB = 96
HIDDEN = 64
INTERMEDIATE = 160
LAYERS = 2
RMS_EPS = 1e-5
MAX_POS = 128

BASE_SEED = 20240611
LINEAR_STD = 0.2  # std of every Linear / Embedding weight
NORM_STD = 0.2  # RMSNorm weight = 1 + NORM_STD * randn
BIAS_STD = 0.1  # every bias = BIAS_STD * randn

# Llama-3 rope scaling for the llama3_rope_bf16 variant.  With head_dim 16 and
# theta 500000 the rotary wavelengths are 2*pi, 32.4, 167, ...; an
# original_max_position_embeddings of 64 (wavelength thresholds 16 and 64)
# leaves the first frequency unchanged, smooths the second and divides the
# rest by `factor`, so all three branches of the llama3 rule are exercised.
# (With 16, every frequency would be modified because 2*pi > 16/4.)
LLAMA3_THETA = 500000.0
LLAMA3_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_type": "llama3",
}

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def _accepts(config_cls, name: str) -> bool:
    return name in inspect.signature(config_cls.__init__).parameters


def rope_kwargs(config_cls, theta: float, scaling: dict | None) -> dict:
    """Rope settings in whichever form this transformers version takes."""
    if _accepts(config_cls, "rope_parameters"):  # transformers >= 5
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling is not None:
            params = dict(scaling)
            params["rope_theta"] = theta
        return {"rope_parameters": params}
    kw = {"rope_theta": theta}  # transformers 4.x
    if scaling is not None:
        kw["rope_scaling"] = dict(scaling)
    return kw


def common_kwargs() -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        rms_norm_eps=RMS_EPS,
        max_position_embeddings=MAX_POS,
        hidden_act="silu",
    )


def make_configs() -> list[dict]:
    variants = []

    variants.append(dict(
        name="llama_gqa_f32", model_cls=LlamaForCausalLM, dtype="f32",
        config=LlamaConfig(**common_kwargs(), num_key_value_heads=2,
                           tie_word_embeddings=False,
                           **rope_kwargs(LlamaConfig, 10000.0, None)),
    ))

    variants.append(dict(
        name="llama3_rope_bf16", model_cls=LlamaForCausalLM, dtype="bf16",
        legacy_rope=True,
        config=LlamaConfig(**common_kwargs(), num_key_value_heads=1,
                           tie_word_embeddings=True,
                           **rope_kwargs(LlamaConfig, LLAMA3_THETA, LLAMA3_SCALING)),
    ))

    variants.append(dict(
        name="llama_headdim_bias_f16", model_cls=LlamaForCausalLM, dtype="f16",
        config=LlamaConfig(**common_kwargs(), num_key_value_heads=2, head_dim=24,
                           attention_bias=True, tie_word_embeddings=False,
                           **rope_kwargs(LlamaConfig, 10000.0, None)),
    ))

    variants.append(dict(
        name="qwen2_bias_f32", model_cls=Qwen2ForCausalLM, dtype="f32",
        config=Qwen2Config(**common_kwargs(), num_key_value_heads=2,
                           tie_word_embeddings=True, use_sliding_window=False,
                           **rope_kwargs(Qwen2Config, 10000.0, None)),
    ))

    variants.append(dict(
        name="mistral_sharded_f32", model_cls=MistralForCausalLM, dtype="f32",
        shard_size="60KB",
        config=MistralConfig(**common_kwargs(), num_key_value_heads=2,
                             sliding_window=None, tie_word_embeddings=False,
                             **rope_kwargs(MistralConfig, 10000.0, None)),
    ))

    # Qwen3: q_norm / k_norm on each head, head_dim decoupled from the hidden size (4 x 24 != 64),
    # no attention biases.
    variants.append(dict(
        name="qwen3_qknorm_f32", model_cls=Qwen3ForCausalLM, dtype="f32",
        config=Qwen3Config(**common_kwargs(), num_key_value_heads=2, head_dim=24,
                           attention_bias=False, tie_word_embeddings=False, use_sliding_window=False,
                           **rope_kwargs(Qwen3Config, 1000000.0, None)),
    ))
    return variants


def reinit_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-initialise all weights so the forward pass is far from trivial."""
    with torch.no_grad():
        for _, mod in sorted(model.named_modules(), key=lambda kv: kv[0]):
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                w = mod.weight
                w.copy_(torch.randn(w.shape, generator=gen) * LINEAR_STD)
                if getattr(mod, "bias", None) is not None:
                    b = mod.bias
                    b.copy_(torch.randn(b.shape, generator=gen) * BIAS_STD)
            elif type(mod).__name__.endswith("RMSNorm"):
                w = mod.weight
                w.copy_(1.0 + torch.randn(w.shape, generator=gen) * NORM_STD)


def forward_reference(model_dir: str, tokens: torch.Tensor, dtype: torch.dtype):
    """Load model_dir in `dtype`, run tokens, return (f32 logits, {l: mlp input}, model)."""
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="eager")
    model.eval()
    mlp_inputs: dict[int, torch.Tensor] = {}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        def hook(_mod, _inp, out, l=l):
            mlp_inputs[l] = out.detach().to(torch.float32).clone()
        hooks.append(layer.post_attention_layernorm.register_forward_hook(hook))
    with torch.no_grad():
        out = model(input_ids=tokens, use_cache=False)
    for h in hooks:
        h.remove()
    return out.logits.detach().to(torch.float32).contiguous(), mlp_inputs, model


def llama3_inv_freq_expected(theta: float, head_dim: int, s: dict) -> torch.Tensor:
    """Independent implementation of the llama3 rope rule (float64)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    old = s["original_max_position_embeddings"]
    low_wl = old / s["low_freq_factor"]
    high_wl = old / s["high_freq_factor"]
    out = []
    for f in inv.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / s["factor"])
        else:
            smooth = (old / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            out.append((1 - smooth) * f / s["factor"] + smooth * f)
    return inv, torch.tensor(out, dtype=torch.float64)


def rewrite_legacy_rope(model_dir: str) -> None:
    """Rewrite config.json rope settings into the Llama-3.2 Hub (legacy) form."""
    path = os.path.join(model_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = LLAMA3_THETA
    cfg["rope_scaling"] = {
        "factor": LLAMA3_SCALING["factor"],
        "low_freq_factor": LLAMA3_SCALING["low_freq_factor"],
        "high_freq_factor": LLAMA3_SCALING["high_freq_factor"],
        "original_max_position_embeddings": LLAMA3_SCALING["original_max_position_embeddings"],
        "rope_type": "llama3",
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def canonicalize_header(path: str) -> None:
    """Sort the __metadata__ keys of a safetensors header in place.

    safetensors writes the metadata map in hash order, which differs between
    runs; sorting it (same keys, same length) makes the file byte-reproducible.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":")).encode()
        assert len(new) <= n, "canonical header longer than original"
        new = new + b" " * (n - len(new))  # the format allows trailing spaces
        f.seek(8)
        f.write(new)


def build_variant(v: dict, index: int, out_root: str) -> dict:
    name = v["name"]
    seed = BASE_SEED + index
    dtype = DTYPES[v["dtype"]]
    model_dir = os.path.join(out_root, name)
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(model_dir)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = v["model_cls"](v["config"]).to(torch.float32)
    reinit_(model, gen)
    if v["config"].tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), \
            f"{name}: lm_head is not tied to embed_tokens"
    model = model.to(dtype).eval()
    save_kw = {"safe_serialization": True}
    if "shard_size" in v:
        save_kw["max_shard_size"] = v["shard_size"]
    model.save_pretrained(model_dir, **save_kw)

    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen, dtype=torch.int64)

    logits, mlp_inputs, ref_model = forward_reference(model_dir, tokens, torch.float32)
    notes = []

    if name == "llama3_rope_bf16":
        head_dim = HIDDEN // v["config"].num_attention_heads
        default_inv, expected = llama3_inv_freq_expected(LLAMA3_THETA, head_dim, LLAMA3_SCALING)
        changed = int((~torch.isclose(expected, default_inv, rtol=1e-12, atol=0)).sum())
        n = expected.numel()
        print(f"  llama3 rope scaling changed {changed} of {n} inv_freq entries")
        assert 0 < changed < n, "llama3 scaling must change some but not all frequencies"
        notes.append(f"llama3 scaling changes {changed}/{n} inv_freq entries")

        rewrite_legacy_rope(model_dir)
        logits2, mlp2, ref_model = forward_reference(model_dir, tokens, torch.float32)
        torch.testing.assert_close(logits2, logits, rtol=1e-6, atol=1e-6)
        for l in mlp_inputs:
            torch.testing.assert_close(mlp2[l], mlp_inputs[l], rtol=1e-6, atol=1e-6)
        got_inv = ref_model.model.rotary_emb.inv_freq.to(torch.float64)
        torch.testing.assert_close(got_inv, expected, rtol=1e-6, atol=0)
        print("  legacy rope_theta/rope_scaling config reloads to identical logits and inv_freq")
        logits, mlp_inputs = logits2, mlp2

    tensors = {"tokens": tokens.contiguous(), "logits": logits}
    for l in sorted(mlp_inputs):
        tensors[f"mlp_input.{l}"] = mlp_inputs[l].contiguous()
    assert len(mlp_inputs) == LAYERS

    if dtype != torch.float32:
        native, _, _ = forward_reference(model_dir, tokens, dtype)
        tensors["logits_native"] = native
        gap = (native - logits).abs().max().item()
        print(f"  native {v['dtype']} vs f32 logits: max abs diff {gap:.4g}")
        notes.append(f"max|logits_native-logits|={gap:.4g}")

    metadata = {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "variant": name,
        "seed": str(seed),
        "checkpoint_dtype": v["dtype"],
        "attn_implementation": "eager",
    }
    ref_path = os.path.join(model_dir, "reference.safetensors")
    save_file(tensors, ref_path, metadata=metadata)
    canonicalize_header(ref_path)

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    return dict(name=name, dir=model_dir, logits_std=logits.std().item(),
                logits_absmax=logits.abs().max().item(), cfg=cfg, notes=notes)


def summarize(info: dict) -> None:
    print(f"{info['name']}:")
    total = 0
    for fn in sorted(os.listdir(info["dir"])):
        size = os.path.getsize(os.path.join(info["dir"], fn))
        total += size
        print(f"    {fn:45s} {size:8d} B")
    print(f"    total {total} B; logits std {info['logits_std']:.3f}, "
          f"max|logit| {info['logits_absmax']:.3f}")
    cfg = info["cfg"]
    keys = [k for k in sorted(cfg) if any(s in k for s in
            ("rope", "head_dim", "bias", "tie", "dtype", "sliding", "architectures"))]
    for k in keys:
        print(f"    config {k} = {json.dumps(cfg[k])}")
    for n in info["notes"]:
        print(f"    note: {n}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/models",
                    help="output directory (default: tests/fixtures/models)")
    ap.add_argument("--only", nargs="*", default=None, help="build only these variants")
    args = ap.parse_args()

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"date {datetime.date.today().isoformat()}")
    os.makedirs(args.out, exist_ok=True)
    infos = []
    for i, v in enumerate(make_configs()):
        if args.only and v["name"] not in args.only:
            continue
        print(f"[{v['name']}] seed {BASE_SEED + i}")
        infos.append(build_variant(v, i, args.out))
    print()
    for info in infos:
        summarize(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
