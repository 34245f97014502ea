#!/usr/bin/env python3
"""Independent PyTorch reference for DUME's statistics collection and router solve.

This is DUME (training-free merge of dense expert LLMs into a Mixture-of-Experts) written the way
the method's authors would write it: one Python process, Hugging Face ``transformers`` models,
forward hooks on ``post_attention_layernorm``, float64 accumulation, ``torch.linalg`` Cholesky
solve. It shares no code with dume (it does not read dume's checkpoint or corpus readers, model,
kernels or solver); it only reads dume's *output* at the end to compare against it
(issue 8, item 4). CI does not run it: it needs torch and transformers, which the C++ build does
not.

What it does (the method as the design reference states it, section 1 "The method, exactly"):

1. load every expert with ``AutoModelForCausalLM.from_pretrained(..., dtype=torch.float32,
   attn_implementation="eager")``;
2. average every non-MLP parameter over the experts in float64, round to the experts' dtype
   (bf16), and put the rounded values (as f32) into every expert's model: expert e's model is then
   "shared weights + expert e's own MLPs", i.e. the merged MoE forced to expert e;
3. for each domain e, run that model over domain e's calibration corpus (raw bytes, or JSON
   Lines through the checkpoint's tokenizer.json, packed; cut into non-overlapping windows of
   ``sequence_length`` tokens, first ``context_tokens`` positions, batches of
   ``batch_sequences``) and, in a forward hook on each layer's
   ``post_attention_layernorm``, accumulate in float64 ``A_l += [X 1]^T [X 1]`` and
   ``B_l[:, e] += [X 1]^T 1``;
4. solve ``W_l = (A_l + lambda I)^{-1} B_l`` (Cholesky, float64), take the last row as the bias
   and the first d rows as the weights, scale each expert's column to unit L2 norm (bias divided
   by the same norm);
5. compare with dume's output directory (``moe.h5`` routers and shared weights, ``stats.h5``
   statistics) and print/write the differences and the timings.

Run it (from the repository root, after ``jobs/merge.sh configs/demo.yaml 1 --force``)::

    pip install torch transformers safetensors h5py numpy pyyaml   # CPU wheels are enough
    python3 tools/reference_dume.py --config configs/demo.yaml --dume-moe build/demo/moe \\
        --threads 2 --json build/demo/reference_dume.json

Results measured on the CI machine kind are in tools/reference_dume.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

_T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

_T_IMPORTED_TORCH = time.perf_counter()
import h5py  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

_T_IMPORTED = time.perf_counter()


# ----------------------------------------------------------------------------------------------
# config


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None, "~": None}.get(text, text)


def _flow(text: str):
    """A flow mapping/sequence on one line ({a: 1, b: {c: 2}}, [x, y]); enough for demo.yaml."""
    text = text.strip()
    if not text or text[0] not in "{[":
        return _scalar(text)
    close = "}" if text[0] == "{" else "]"
    assert text[-1] == close, text
    items, depth, start = [], 0, 1
    for i, ch in enumerate(text[1:-1], start=1):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if text[start:-1].strip():
        items.append(text[start:-1])
    if close == "]":
        return [_flow(x) for x in items]
    out = {}
    for item in items:
        key, _, value = item.partition(":")
        out[key.strip()] = _flow(value)
    return out


def _tiny_yaml(text: str) -> dict:
    """Fallback parser for the structure of configs/*.yaml when PyYAML is missing: top-level keys
    with flow values or a block sequence of mappings (``experts:``)."""
    root: dict = {}
    current_list = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent == 0:
            key, _, value = body.partition(":")
            if value.strip():
                root[key] = _flow(value)
                current_list = None
            else:
                root[key] = current_list = []
        elif body.startswith("- "):
            key, _, value = body[2:].partition(":")
            current_list.append({key.strip(): _flow(value)})
        else:
            key, _, value = body.partition(":")
            current_list[-1][key.strip()] = _flow(value)
    return root


def load_config(path: Path) -> dict:
    text = path.read_text()
    try:
        import yaml  # type: ignore

        return yaml.safe_load(text)
    except ImportError:
        return _tiny_yaml(text)


# ----------------------------------------------------------------------------------------------
# the method


def is_shared(name: str) -> bool:
    """Every parameter that is not an MLP weight is shared (averaged)."""
    return ".mlp." not in name


def read_windows(spec: dict, base: Path, checkpoint: Path, sequence_length: int, context: int,
                 max_sequences: int) -> torch.Tensor:
    """A text-bytes or JSON Lines corpus -> [N, context] int64 token ids (non-overlapping windows of
    the packed documents, tail dropped). JSON Lines documents go through the checkpoint's own
    tokenizer.json with Hugging Face `tokenizers`, special tokens included, as users would."""
    path = base / spec["path"]
    if spec.get("format", "text-bytes") == "jsonl":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        field = spec.get("field", "text")
        docs = [json.loads(line)[field] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        data = np.array([i for d in tokenizer.encode_batch(docs) for i in d.ids], dtype=np.int64)
    else:
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64)
    n = len(data) // sequence_length
    if max_sequences > 0:
        n = min(n, max_sequences)
    windows = data[: n * sequence_length].reshape(n, sequence_length)[:, :context]
    return torch.from_numpy(np.ascontiguousarray(windows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    ap.add_argument("--dume-moe", type=Path, default=Path("build/demo/moe"),
                    help="dume's output directory (moe.h5, stats.h5) to compare against; "
                         "'none' to skip the comparison")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--attn", default="eager", help='attn_implementation ("eager" or "sdpa")')
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    cfg = load_config(args.config)
    base = args.config.resolve().parent
    experts = cfg["experts"]
    names = [e["name"] for e in experts]
    E = len(names)
    router_cfg = cfg.get("router", {}) or {}
    cal_cfg = cfg.get("calibration", {}) or {}
    lam = float(router_cfg.get("lambda", 1e-2))
    use_bias = bool(router_cfg.get("bias", True))
    seq_len = int(cal_cfg.get("sequence_length", 256))
    context = int(router_cfg.get("context_tokens", seq_len))
    context = min(context, seq_len)
    max_seq = int(cal_cfg.get("max_sequences", 0))
    batch = int(cal_cfg.get("batch_sequences", 8))
    for e in experts:
        fmt = e["calibration"].get("format", "text-bytes")
        if fmt not in ("text-bytes", "jsonl"):
            sys.exit(f"reference_dume.py reads text-bytes and jsonl corpora only (got {fmt!r} for {e['name']})")
    if not use_bias:
        sys.exit("reference_dume.py implements router.bias: true only")

    timing: dict[str, float] = {
        "import_torch_s": _T_IMPORTED_TORCH - _T_START,
        "import_transformers_h5py_s": _T_IMPORTED - _T_IMPORTED_TORCH,
    }
    t_begin = time.perf_counter()

    # 1. load the experts ------------------------------------------------------------------------
    t0 = time.perf_counter()
    models = []
    for e in experts:
        m = AutoModelForCausalLM.from_pretrained(
            str(base / e["checkpoint"]), dtype=torch.float32, attn_implementation=args.attn)
        m.eval()
        models.append(m)
    # the experts' storage dtype (bf16 for the demo): the shared weights are rounded to it. Read it
    # from config.json, not from the loaded model's config (dtype=float32 overwrites that one).
    store_dtypes = set()
    for e in experts:
        hf_config = json.loads((base / e["checkpoint"] / "config.json").read_text())
        store_dtypes.add(hf_config.get("dtype") or hf_config.get("torch_dtype"))
    if len(store_dtypes) != 1:
        sys.exit(f"experts are stored in different dtypes: {sorted(map(str, store_dtypes))}")
    store_dtype = getattr(torch, store_dtypes.pop() or "float32")
    timing["load_s"] = time.perf_counter() - t0

    # 2. shared weights: f64 mean, rounded to the storage dtype, back to f32 ----------------------
    t0 = time.perf_counter()
    states = [m.state_dict() for m in models]
    shared: dict[str, torch.Tensor] = {}   # rounded values, in store_dtype
    with torch.no_grad():
        for name in states[0]:
            if not is_shared(name):
                continue
            mean = torch.stack([s[name].double() for s in states]).mean(0)
            shared[name] = mean.to(store_dtype)
        for m in models:
            params = dict(m.named_parameters())
            for name, value in shared.items():
                params[name].copy_(value.float())
    del states
    timing["average_s"] = time.perf_counter() - t0

    # 3. statistics: forward hooks on post_attention_layernorm ------------------------------------
    t0 = time.perf_counter()
    cfg0 = models[0].config
    d, L = cfg0.hidden_size, cfg0.num_hidden_layers
    A = [{n: torch.zeros(d + 1, d + 1, dtype=torch.float64) for n in names} for _ in range(L)]
    B = [torch.zeros(d + 1, E, dtype=torch.float64) for _ in range(L)]
    tokens = [0] * E
    state = {"domain": 0}

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            x = output.reshape(-1, d).double()
            xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
            e = state["domain"]
            A[layer][names[e]] += xa.T @ xa
            B[layer][:, e] += xa.sum(0)
        return hook

    total_tokens = 0
    for e, (spec, model) in enumerate(zip(experts, models)):
        state["domain"] = e
        windows = read_windows(spec["calibration"], base, base / spec["checkpoint"], seq_len, context, max_seq)
        handles = [layer.post_attention_layernorm.register_forward_hook(make_hook(i))
                   for i, layer in enumerate(model.model.layers)]
        with torch.no_grad():
            for i in range(0, len(windows), batch):
                model(input_ids=windows[i:i + batch], use_cache=False)
        for h in handles:
            h.remove()
        tokens[e] = windows.numel()
        total_tokens += windows.numel()
    timing["calibrate_s"] = time.perf_counter() - t0

    # 4. solve + normalise --------------------------------------------------------------------
    t0 = time.perf_counter()
    weights, biases = [], []
    eye = torch.eye(d + 1, dtype=torch.float64)
    for layer in range(L):
        a = sum(A[layer][n] for n in names)
        chol = torch.linalg.cholesky(a + lam * eye)
        w = torch.cholesky_solve(B[layer], chol)          # (d+1) x E
        norm = w[:d].norm(dim=0)
        norm = torch.where(norm == 0, torch.full_like(norm, 1e-6), norm)
        weights.append((w[:d] / norm).T.contiguous().float())  # [E, d]
        biases.append((w[d] / norm).float())                    # [E]
    timing["solve_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_begin
    timing["total_with_imports_s"] = time.perf_counter() - _T_START

    result = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "threads": args.threads, "attn_implementation": args.attn},
        "config": str(args.config), "experts": names, "lambda": lam, "context_tokens": context,
        "sequence_length": seq_len, "batch_sequences": batch,
        "tokens": dict(zip(names, tokens)), "total_tokens": total_tokens,
        "timing": timing,
        "calibration_tokens_per_s": total_tokens / timing["calibrate_s"],
        "end_to_end_tokens_per_s": total_tokens / timing["total_s"],
    }

    # 5. compare with dume ------------------------------------------------------------------------
    if str(args.dume_moe) != "none":
        result["compare"] = compare(args.dume_moe, names, L, weights, biases, A, B, tokens, shared, store_dtype)

    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------
# comparison


def _rel(ref: np.ndarray, other: np.ndarray) -> float:
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(ref - other))) / (scale if scale > 0 else 1.0)


def _h5_name(hf: str) -> str:
    """transformers parameter name -> dume moe.h5 dataset path."""
    parts = hf.split(".")
    if parts[0] == "lm_head":
        return "lm_head"
    assert parts[0] == "model", hf
    rest = parts[1:]
    if rest[0] in ("embed_tokens", "norm"):
        return rest[0]
    assert rest[0] == "layers", hf
    layer, module = rest[1], rest[2:]
    if module[0] == "self_attn":
        return f"layers/{layer}/self_attn/{module[1]}" + ("_bias" if module[2] == "bias" else "")
    return f"layers/{layer}/{module[0]}"


def _bits(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.contiguous().numpy()


def compare(moe_dir: Path, names, L, weights, biases, A, B, tokens, shared, store_dtype) -> dict:
    out: dict = {"layers": []}
    with h5py.File(moe_dir / "moe.h5", "r") as moe, h5py.File(moe_dir / "stats.h5", "r") as st:
        dume_experts = [x.decode() if isinstance(x, bytes) else str(x) for x in moe.attrs["experts"]]
        if dume_experts != names:
            raise SystemExit(f"dume's MoE has experts {dume_experts}, the config {names}")
        dume_tokens = np.asarray(st["tokens"])
        out["tokens_equal"] = bool(np.array_equal(dume_tokens, np.asarray(tokens)))
        for layer in range(L):
            w_d = np.asarray(moe[f"layers/{layer}/router/weight"], dtype=np.float64)
            b_d = np.asarray(moe[f"layers/{layer}/router/bias"], dtype=np.float64)
            w_r = weights[layer].double().numpy()
            b_r = biases[layer].double().numpy()
            row = {"layer": layer, "router_weight_rel": _rel(w_r, w_d), "router_bias_rel": _rel(b_r, b_d),
                   "B_rel": _rel(B[layer].numpy(), np.asarray(st[f"layers/{layer}/B"]))}
            row["A_rel"] = max(_rel(A[layer][n].numpy(), np.asarray(st[f"layers/{layer}/A/{n}"])) for n in names)
            out["layers"].append(row)
        differing, total, tensors_checked = 0, 0, 0
        for name, value in shared.items():
            path = _h5_name(name)
            ds = moe[path]
            mine = _bits(value)
            theirs = np.asarray(ds)
            if mine.dtype == np.uint16 and theirs.dtype != np.uint16:
                raise SystemExit(f"{path}: dume stored {theirs.dtype}, expected 16-bit storage")
            if theirs.shape != mine.shape:
                raise SystemExit(f"{path}: shape {theirs.shape} in dume, {mine.shape} here")
            differing += int(np.count_nonzero(mine != theirs))
            total += mine.size
            tensors_checked += 1
        out["shared_tensors_checked"] = tensors_checked
        out["shared_elements"] = total
        out["shared_elements_differing"] = differing
    out["max_router_weight_rel"] = max(r["router_weight_rel"] for r in out["layers"])
    out["max_router_bias_rel"] = max(r["router_bias_rel"] for r in out["layers"])
    out["max_A_rel"] = max(r["A_rel"] for r in out["layers"])
    out["max_B_rel"] = max(r["B_rel"] for r in out["layers"])
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _print(r: dict) -> None:
    t = r["timing"]
    m = r["machine"]
    print(f"reference DUME (torch {m['torch']}, transformers {m['transformers']}, {m['threads']} thread(s), "
          f"attn={m['attn_implementation']})")
    print(f"  imports {t['import_torch_s'] + t['import_transformers_h5py_s']:.2f} s | load {t['load_s']:.2f} s | "
          f"average {t['average_s']:.2f} s | calibrate {t['calibrate_s']:.2f} s | solve {t['solve_s']:.3f} s")
    print(f"  total {t['total_s']:.2f} s ({t['total_with_imports_s']:.2f} s with imports), "
          f"{r['total_tokens']} tokens, calibration {r['calibration_tokens_per_s']:.0f} tokens/s")
    c = r.get("compare")
    if not c:
        return
    print(f"  shared weights: {c['shared_elements_differing']} of {c['shared_elements']} elements differ "
          f"({c['shared_tensors_checked']} tensors); token counts equal: {c['tokens_equal']}")
    print("  layer  router_w_rel  router_b_rel  A_rel      B_rel")
    for row in c["layers"]:
        print(f"  {row['layer']:5d}  {row['router_weight_rel']:.3e}     {row['router_bias_rel']:.3e}     "
              f"{row['A_rel']:.3e}  {row['B_rel']:.3e}")


if __name__ == "__main__":
    sys.exit(main())
