#!/usr/bin/env python3
"""Train the tiny byte-level Llama base and four domain experts bundled in ``experts/``.

What it makes (under ``<out>``, by default ``experts/`` at the repository root):

* ``data/<domain>.calib.jsonl``: the calibration bytes as JSON Lines documents
  (``{"text": ..., "domain": ...}``, cut after blank lines), whose documents
  packed back to back are the .bin's bytes: the demo reads these.
* ``data/<domain>.calib.bin`` (131072 bytes) and ``data/<domain>.test.bin``
  (65536 bytes) for four byte-level text domains gathered from files of this
  Debian 12 machine: ``c`` (C headers under /usr/include), ``python`` (the
  Python 3.11 standard library under /usr/lib/python3.11), ``prose`` (GNU Info
  manuals under /usr/share/info, English documentation prose) and ``roff``
  (English man page sources under /usr/share/man/man[1-8]).  Raw bytes; dume
  reads them with ``--format text-bytes`` (every byte is one token id 0..255).
  Each domain's files are put in a fixed seeded order and split *by file* into
  test / calibration / train, so no file contributes to two splits.  The train
  corpora (~2.5 MiB per domain) live only in memory and are not written.
* ``base/``: a ~0.8M-parameter ``LlamaForCausalLM`` (vocab 256 = bytes, hidden
  128, 4 layers, 4 heads, 2 KV heads, untied lm_head) trained on the equal
  mixture of the four train sets.
* ``c/``, ``python/``, ``prose/``, ``roff/``: the base fine-tuned on one
  domain's train set each.
* Every checkpoint is a Hugging Face ``save_pretrained`` directory
  (config.json + model.safetensors) in bfloat16, with a ``tokenizer.json``
  (byte-level BPE without merges: every UTF-8 byte is its own id), so text and
  JSONL corpora tokenize to the same ids as ``--format text-bytes``.
* ``reference_ppl.json``: per-byte perplexity of each bf16 checkpoint (reloaded,
  computed in float32) on each domain's test split: non-overlapping windows of
  256 bytes, every byte but each window's first predicted, tail dropped.
* ``README.md``: sources (patterns, Debian packages and versions), split sizes,
  model shape, training recipe, wall times and the perplexity table.

These are tiny demo models for exercising the dume pipeline, not useful
language models.  The files are committed; CI does NOT run this script (it
needs torch, transformers, safetensors and numpy from PyPI, the Debian files
named above, and about 30-35 minutes on one CPU core: it runs torch with a
single thread).  Everything is seeded and single-threaded, so re-running it on
the same machine with the same library versions reproduces the same files
(all but the wall times quoted in README.md).

Usage:
    python3 tools/make_bundled_experts.py [--out experts] [--smoke]

``--smoke`` runs a few steps of everything (for testing the script); never
commit its output.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import safetensors
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOMAINS = ["c", "python", "prose", "roff"]
SPLIT_SEED = 1234  # order of each domain's files before the split
TEST_BYTES = 64 * 1024
CALIB_BYTES = 128 * 1024
TRAIN_BYTES = int(2.5 * 1024 * 1024)  # train stops taking files once it has this many bytes
EVAL_CAP_PER_FILE = 32 * 1024  # at most this many bytes (a prefix) of one file in test / calib
TRAIN_CAP_PER_FILE = 256 * 1024  # ... and in train

SEQ = 256  # training and evaluation window
EVAL_BATCH = 32

MODEL = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=512,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    initializer_range=0.02,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# Training recipes.  AdamW(betas=(0.9, 0.95), eps=1e-8), weight decay on matrices only,
# gradient clipping at 1.0, linear warmup then cosine decay to 10% of the peak lr.
BASE = dict(steps=700, batch=32, lr=2e-3, warmup=50, weight_decay=0.1, seed=1)
EXPERT = dict(steps=350, batch=16, lr=1e-3, warmup=20, weight_decay=0.1, seed=2)
INIT_SEED = 0


# ----------------------------------------------------------------------------------------------
# Data


def _c_headers() -> list[str]:
    # Every *.h under /usr/include except the C++ trees and C++-only libraries.
    skip_dirs = {"c++", "node", "llvm-14", "clang", "eigen3", "gtest", "gmock", "benchmark",
                 "nlohmann", "yaml-cpp", "unicode"}
    out = []
    for root, dirs, files in os.walk("/usr/include"):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        out += [os.path.join(root, f) for f in files if f.endswith(".h") and "++" not in f]
    return out


def _python_sources() -> list[str]:
    return glob.glob("/usr/lib/python3.11/**/*.py", recursive=True)


def _info_manuals() -> list[str]:
    return glob.glob("/usr/share/info/*.info*.gz")


def _man_pages() -> list[str]:
    # English man pages only; the ~16.6k auto-generated gcloud_* pages (google-cloud-cli, not
    # a Debian package) would swamp everything else.
    return [p for p in glob.glob("/usr/share/man/man[1-8]/*.gz")
            if not os.path.basename(p).startswith("gcloud")]


SOURCES = {
    "c": dict(
        lister=_c_headers,
        pattern="/usr/include/**/*.h, except the trees c++/ node/ llvm-14/ clang/ eigen3/ gtest/ "
                "gmock/ benchmark/ nlohmann/ yaml-cpp/ unicode/ and names containing '++'",
        what="C header files (glibc, Linux UAPI, and the C libraries' -dev packages)"),
    "python": dict(
        lister=_python_sources,
        pattern="/usr/lib/python3.11/**/*.py",
        what="Python source: the Debian Python 3.11 standard library"),
    "prose": dict(
        lister=_info_manuals,
        pattern="/usr/share/info/*.info*.gz (gunzipped; indirect tag-table stubs skipped; "
                "only the nodes kept, without the preamble, the Top node and the tag table)",
        what="English technical prose: GNU Info manuals (plain text rendered by makeinfo)"),
    "roff": dict(
        lister=_man_pages,
        pattern="/usr/share/man/man[1-8]/*.gz (gunzipped; English only; gcloud_* and "
                "'.so' redirect stubs skipped)",
        what="roff/troff man page sources (man(7) macros)"),
}


def read_source(domain: str, path: str) -> bytes | None:
    """The file's bytes, or None when the file does not count for the domain."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    if domain == "roff" and data.startswith(b".so "):
        return None
    if domain == "prose":
        if b"\nIndirect:\n" in data[:4096]:
            return None
        # Keep the manual's nodes, joined by their \x1f separators as in the file, but not the
        # preamble, the Top node (mostly one long menu) or the tag table.
        nodes = [n for n in data.split(b"\x1f") if n.startswith(b"\nFile: ")]
        data = b"\x1f".join(n for n in nodes if b" Node: Top," not in n[: n.find(b"\n", 1)])
    if len(data) < 64:
        return None
    return data


def build_domain(domain: str) -> dict:
    """Splits one domain by file: returns the three corpora and what went into them."""
    paths = sorted(set(SOURCES[domain]["lister"]()))
    order = list(paths)
    random.Random(f"{SPLIT_SEED}-{domain}").shuffle(order)
    splits = [("test", TEST_BYTES, EVAL_CAP_PER_FILE, True),
              ("calib", CALIB_BYTES, EVAL_CAP_PER_FILE, True),
              ("train", TRAIN_BYTES, TRAIN_CAP_PER_FILE, False)]
    seen = set()
    out = {"candidates": len(paths), "skipped": 0, "duplicates": 0}
    i = 0
    for name, target, cap, exact in splits:
        parts, files = [], []
        have = 0
        while have < target:
            if i >= len(order):
                raise SystemExit(f"{domain}: ran out of files filling '{name}' ({have} of {target} bytes)")
            path = order[i]
            i += 1
            data = read_source(domain, path)
            if data is None:
                out["skipped"] += 1
                continue
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                out["duplicates"] += 1
                continue
            seen.add(digest)
            take = data[:cap]
            if exact:
                take = take[: target - have]
            parts.append(take)
            files.append((path, len(take), len(data)))
            have += len(take)
        out[name] = b"".join(parts)
        out[name + "_files"] = files
    out["unused"] = len(order) - i
    return out


def dpkg_owners() -> dict[str, str]:
    """Path -> owning Debian package, from dpkg's file lists."""
    owners = {}
    for lst in glob.glob("/var/lib/dpkg/info/*.list"):
        pkg = os.path.basename(lst)[: -len(".list")]
        with open(lst, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                owners[line] = pkg
    return owners


def dpkg_versions(pkgs) -> dict[str, str]:
    if not pkgs:
        return {}
    res = subprocess.run(["dpkg-query", "-W", "-f=${binary:Package} ${Version}\n", *sorted(pkgs)],
                         capture_output=True, text=True)
    versions = {}
    for line in res.stdout.splitlines():
        name, _, version = line.partition(" ")
        versions[name] = version
        versions[name.split(":")[0]] = version
    return versions


def dpkg_s(path: str) -> str:
    res = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    return res.stdout.strip() or res.stderr.strip()


def unigram_entropy(data: bytes) -> float:
    """Entropy of the byte distribution, in nats."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------------------------
# Model, training, evaluation


def make_config() -> LlamaConfig:
    cfg = LlamaConfig(**MODEL)
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def sample_batch(rng: np.random.Generator, corpora: list[np.ndarray], batch: int) -> torch.Tensor:
    """`batch` random windows of SEQ+1 bytes, split evenly over `corpora` (in order)."""
    rows = []
    for k in range(batch):
        data = corpora[k * len(corpora) // batch]
        start = int(rng.integers(0, len(data) - SEQ - 1))
        rows.append(data[start : start + SEQ + 1])
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def train(model: LlamaForCausalLM, corpora: list[np.ndarray], recipe: dict, label: str, log) -> list:
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=recipe["lr"], betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(recipe["seed"])
    curve = []
    running, n_running = 0.0, 0
    t0 = time.perf_counter()
    for step in range(recipe["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, recipe["steps"], recipe["lr"], recipe["warmup"])
        x = sample_batch(rng, corpora, recipe["batch"])
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        n_running += 1
        if (step + 1) % 50 == 0 or step + 1 == recipe["steps"]:
            avg = running / n_running
            curve.append((step + 1, avg))
            log(f"  [{label}] step {step + 1:4d}/{recipe['steps']}  loss {avg:.4f} nats/byte  "
                f"lr {opt.param_groups[0]['lr']:.2e}  {time.perf_counter() - t0:6.0f}s")
            running, n_running = 0.0, 0
    model.eval()
    return curve


@torch.no_grad()
def perplexity(model: LlamaForCausalLM, data: bytes) -> float:
    """Per-byte perplexity: non-overlapping SEQ windows, every byte but each window's first
    predicted from the ones before it in its window, the tail that does not fill a window dropped."""
    model.eval()
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    n = len(ids) // SEQ
    windows = torch.from_numpy(ids[: n * SEQ].reshape(n, SEQ))
    total, count = 0.0, 0
    for b in range(0, n, EVAL_BATCH):
        x = windows[b : b + EVAL_BATCH]
        logits = model(input_ids=x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def byte_tokenizer_json() -> str:
    """The models' tokenizer: byte-level BPE without merges, each byte its own id (the GPT-2 byte
    to character map), no special tokens. Text and JSONL corpora then tokenize to their UTF-8
    bytes, exactly as ``--format text-bytes`` reads them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()  # the 256 characters standing for the bytes
    byte_to_char = {}
    for b in range(256):  # GPT-2's bytes_to_unicode, the order ByteLevel uses
        byte_to_char[b] = chr(b) if (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255) else None
    n = 0
    for b in range(256):
        if byte_to_char[b] is None:
            byte_to_char[b] = chr(256 + n)
            n += 1
    assert set(byte_to_char.values()) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab={byte_to_char[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    text = "Bytes: ü, 中文, 😀 and\ttabs"
    assert tok.encode(text).ids == list(text.encode("utf-8"))
    return tok.to_str(pretty=True)


def calibration_jsonl(data: bytes, domain: str) -> str:
    """The calibration bytes as JSON Lines documents, cut after each blank line (a document keeps
    its separator), so the documents packed back to back are exactly the bytes of the .bin."""
    import json

    text = data.decode("utf-8")
    lines, docs, current = text.splitlines(keepends=True), [], ""
    for line in lines:
        current += line
        if line.strip() == "" and current.strip() != "":
            docs.append(current)
            current = ""
    if current:
        docs.append(current)
    assert "".join(docs) == text
    return "".join(json.dumps({"text": d, "domain": domain}, ensure_ascii=False) + "\n" for d in docs)


def save_bf16(model: LlamaForCausalLM, path: str) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    copy = copy.to(torch.bfloat16)
    copy.config.dtype = "bfloat16"
    copy.save_pretrained(path, safe_serialization=True)
    gen = os.path.join(path, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(byte_tokenizer_json())


def load_f32(path: str) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# README


def fmt_table(ppl: dict, models: list[str]) -> str:
    lines = ["| model | " + " | ".join(DOMAINS) + " |", "|---|" + "---:|" * len(DOMAINS)]
    for m in models:
        row = ppl[m]
        best = {d: min(ppl[k][d] for k in models) for d in DOMAINS}
        cells = [(f"**{row[d]:.3f}**" if row[d] == best[d] else f"{row[d]:.3f}") for d in DOMAINS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(out: str, info: dict) -> None:
    L = []
    a = L.append
    a("# Bundled tiny experts\n")
    a("Tiny **demo** models for exercising the dume pipeline end to end on real (if small) "
      "checkpoints: one byte-level Llama base and four domain experts fine-tuned from it, plus "
      "calibration and test corpora for the four domains. They were trained on this machine's CPU "
      "by `tools/make_bundled_experts.py`; everything in this directory is exactly what one run "
      "of that script wrote. They are far too small to be useful language models: their only "
      "job is that each expert is clearly the best model on its own domain, so that merging "
      "them into a Mixture-of-Experts and routing has something real to show. CI does not run "
      "the script.\n")
    a("## Layout\n")
    a("| path | what |\n|---|---|")
    a("| `base/` | the base model, trained on the equal mixture of the four domains |")
    for d in DOMAINS:
        a(f"| `{d}/` | expert: the base fine-tuned on `{d}` only |")
    a("| `data/<domain>.calib.bin` | calibration corpus, 131072 bytes |")
    a("| `data/<domain>.calib.jsonl` | the same bytes as JSON Lines documents (cut after blank lines) |")
    a("| `data/<domain>.test.bin` | test corpus, 65536 bytes |")
    a("| `reference_ppl.json` | per-byte test perplexity of every checkpoint on every domain, as `{model: {domain: ppl}}` |")
    a("")
    a("Checkpoints are Hugging Face `save_pretrained` directories (`config.json` + "
      "`model.safetensors`), weights in **bfloat16**. Corpora are raw bytes: read them with "
      "`--format text-bytes` (every byte is one token id, 0..255; the models' vocabulary is the "
      "256 byte values, no special tokens). Each checkpoint also has a `tokenizer.json` (byte-level "
      "BPE without merges: every UTF-8 byte is its own id), so the same text as `--format text`/`jsonl` "
      "tokenizes to the same ids; `data/<domain>.calib.jsonl` holds the calibration bytes as JSON Lines "
      "documents that pack back to exactly the `.bin`.\n")
    a("```sh")
    a("dume ppl --checkpoint experts/python --corpus experts/data/python.test.bin --format text-bytes")
    a("```\n")

    a("## Domains and sources\n")
    a("Gathered from the files of a Debian 12 (bookworm) machine "
      f"({info['platform']}).\n")
    a("| domain | content | files matched | pattern |\n|---|---|---:|---|")
    for d in DOMAINS:
        s = info["data"][d]
        a(f"| `{d}` | {SOURCES[d]['what']} | {s['candidates']} | {SOURCES[d]['pattern']} |")
    a("")
    a("### Split\n")
    a(f"For each domain the matching paths are sorted, then shuffled with "
      f"`random.Random(\"{SPLIT_SEED}-<domain>\")`, and taken in that order: files that are "
      "symlinks, under 64 bytes, `.so` redirects (roff) or Info tag-table stubs (prose) are skipped "
      "(of an Info manual only its nodes are kept, minus the Top node), "
      "and so is any file whose content (SHA-256) was already taken. The first files fill **test** "
      f"({TEST_BYTES} bytes), the next ones **calibration** ({CALIB_BYTES} bytes), the next ones "
      f"**train** (until it holds at least {TRAIN_BYTES} bytes). A file goes to one split only: "
      f"the split is by file, never by byte offset. Each file contributes a prefix of at most "
      f"{EVAL_CAP_PER_FILE // 1024} KiB to test / calibration and {TRAIN_CAP_PER_FILE // 1024} KiB "
      "to train (so no single big file dominates); the last file of test and of calibration is cut "
      "so those corpora have exactly their size. Files are concatenated as they are, without "
      "separators. The train corpora are not committed (the script rebuilds them).\n")
    a("| domain | test files | calib files | train files | train bytes | unigram entropy of train (bits/byte) |")
    a("|---|---:|---:|---:|---:|---:|")
    for d in DOMAINS:
        s = info["data"][d]
        a(f"| `{d}` | {s['test_files']} | {s['calib_files']} | {s['train_files']} | {s['train_bytes']} | "
          f"{s['unigram_bits']:.3f} |")
    a("")
    a("### Debian packages\n")
    a("Owners of the files used (all three splits), from dpkg's file lists, with the installed "
      "versions; the most-used packages by bytes taken:\n")
    for d in DOMAINS:
        s = info["data"][d]
        a(f"- **`{d}`** ({s['n_packages']} packages): " + ", ".join(
            f"`{p}` {v} ({n} files)" for p, v, n in s["packages"]) +
          (", ..." if s["n_packages"] > len(s["packages"]) else ""))
    a("")
    a("`dpkg -S` on sample files:\n")
    a("```")
    for d in DOMAINS:
        for line in info["data"][d]["dpkg_s"]:
            a(line)
    a("```\n")
    a("<details><summary>Exact files in the test and calibration corpora (path, bytes taken / file bytes, in corpus order)</summary>\n")
    for d in DOMAINS:
        for split in ("test", "calib"):
            a(f"**`{d}.{split}.bin`**\n")
            a("```")
            for p, took, size in info["data"][d][split + "_list"]:
                a(f"{p}  {took}/{size}")
            a("```\n")
    a("</details>\n")

    a("## Models\n")
    m = MODEL
    a(f"`LlamaForCausalLM`: vocab_size {m['vocab_size']} (bytes), hidden_size {m['hidden_size']}, "
      f"intermediate_size {m['intermediate_size']} (SiLU-gated MLP), num_hidden_layers "
      f"{m['num_hidden_layers']}, num_attention_heads {m['num_attention_heads']} (head_dim "
      f"{m['hidden_size'] // m['num_attention_heads']}), num_key_value_heads "
      f"{m['num_key_value_heads']} (GQA), untied lm_head, rms_norm_eps {m['rms_norm_eps']}, "
      f"rope_theta {m['rope_theta']:g}, max_position_embeddings {m['max_position_embeddings']}, "
      f"no biases. **{info['n_params']:,} parameters**; each bf16 `model.safetensors` is "
      f"{info['ckpt_bytes']:,} bytes.\n")
    a("## Training\n")
    a(f"torch {torch.__version__} (CPU, `torch.set_num_threads(1)`), transformers "
      f"{transformers.__version__}, safetensors {safetensors.__version__}, numpy {np.__version__}, "
      f"Python {platform.python_version()}. Training in float32. Weights initialised by transformers "
      f"(normal, std {m['initializer_range']}) after `torch.manual_seed({INIT_SEED})`. Inputs are "
      f"random windows of {SEQ + 1} bytes of a train corpus (start drawn uniformly by "
      "`numpy.random.default_rng(seed)`); the loss is the mean cross-entropy of predicting bytes "
      f"2..{SEQ + 1} of each window from the ones before. AdamW (betas 0.9/0.95, eps 1e-8, weight "
      "decay on matrices only), gradient clipping at norm 1.0, linear warmup then cosine decay to "
      "10% of the peak learning rate.\n")
    a("| stage | data | steps | batch (windows) | peak lr | warmup | weight decay | data seed | wall time |")
    a("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    b = BASE
    a(f"| base | equal mixture ({b['batch'] // len(DOMAINS)} windows of each domain per batch) | "
      f"{b['steps']} | {b['batch']} | {b['lr']:g} | {b['warmup']} | {b['weight_decay']} | {b['seed']} | "
      f"{info['times']['base']:.0f} s |")
    e = EXPERT
    for i, d in enumerate(DOMAINS):
        a(f"| expert `{d}` (from base) | `{d}` train only | {e['steps']} | {e['batch']} | {e['lr']:g} | "
          f"{e['warmup']} | {e['weight_decay']} | {e['seed'] + i} | {info['times'][d]:.0f} s |")
    a("")
    a(f"Base training loss (mean of the last 50 steps): **{info['base_final_loss']:.3f} nats/byte "
      f"({info['base_final_loss'] / math.log(2):.3f} bits/byte)**, against a unigram entropy of "
      f"{info['mix_unigram_nats'] / math.log(2):.3f} bits/byte for the train mixture.\n")
    a(f"Wall times on a 2-core AMD EPYC VM (one thread, shared with other work): data "
      f"{info['times']['data']:.0f} s, base {info['times']['base']:.0f} s, experts "
      f"{sum(info['times'][d] for d in DOMAINS):.0f} s, saving and evaluation "
      f"{info['times']['eval']:.0f} s; **total {info['times']['total']:.0f} s** "
      f"({info['times']['total'] / 60:.1f} min).\n")

    a("## Test perplexity\n")
    a(f"Per-byte perplexity on each domain's test split (`data/<domain>.test.bin`): the "
      f"{TEST_BYTES} bytes cut into {TEST_BYTES // SEQ} non-overlapping windows of {SEQ}, every byte "
      f"but each window's first predicted from the ones before it in its window "
      f"({TEST_BYTES // SEQ * (SEQ - 1)} predictions per domain), perplexity = exp(mean NLL in nats). "
      "Computed in float32 from the saved **bfloat16** checkpoints after reloading them "
      "(this is `reference_ppl.json`); the best model per domain in bold.\n")
    models = ["base"] + DOMAINS
    a(fmt_table(info["ppl_bf16"], models))
    a("")
    a("Margin of each expert on its own domain (runner-up perplexity / expert perplexity): " + ", ".join(
        f"`{d}` {info['margins'][d]:.3f}x" for d in DOMAINS) + ".\n")
    a("The same, computed from the float32 weights before the bf16 cast:\n")
    a(fmt_table(info["ppl_f32"], models))
    a("")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(L))


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "experts"))
    ap.add_argument("--smoke", action="store_true", help="a few steps only; never commit the output")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.utils.logging.disable_progress_bar()
    if args.smoke:
        BASE["steps"], BASE["warmup"] = 4, 2
        EXPERT["steps"], EXPERT["warmup"] = 2, 1

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = args.out
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    times = {}
    t_start = time.perf_counter()

    # ---- data
    log("== data")
    owners = dpkg_owners()
    data, trains, tests, info_data = {}, {}, {}, {}
    all_pkgs = set()
    for d in DOMAINS:
        s = build_domain(d)
        with open(os.path.join(out, "data", f"{d}.calib.bin"), "wb") as f:
            f.write(s["calib"])
        with open(os.path.join(out, "data", f"{d}.test.bin"), "wb") as f:
            f.write(s["test"])
        with open(os.path.join(out, "data", f"{d}.calib.jsonl"), "w") as f:
            f.write(calibration_jsonl(s["calib"], d))
        assert len(s["calib"]) == CALIB_BYTES and len(s["test"]) == TEST_BYTES
        trains[d] = np.frombuffer(s["train"], dtype=np.uint8)
        tests[d] = s["test"]
        used = s["test_files"] + s["calib_files"] + s["train_files"]
        assert len({p for p, _, _ in used}) == len(used)  # no file in two splits
        pkg_bytes, pkg_files = Counter(), Counter()
        for p, took, _ in used:
            pkg = owners.get(p) or owners.get(os.path.realpath(p)) or "(no package)"
            pkg_bytes[pkg] += took
            pkg_files[pkg] += 1
        all_pkgs |= {p for p in pkg_bytes if p != "(no package)"}
        samples = [s["test_files"][0][0], s["calib_files"][0][0], s["train_files"][0][0]]
        info_data[d] = dict(
            candidates=s["candidates"], test_files=len(s["test_files"]), calib_files=len(s["calib_files"]),
            train_files=len(s["train_files"]), train_bytes=len(s["train"]),
            unigram_bits=unigram_entropy(s["train"]) / math.log(2),
            test_list=s["test_files"], calib_list=s["calib_files"],
            pkg_bytes=pkg_bytes, pkg_files=pkg_files, n_packages=len(pkg_bytes),
            dpkg_s=[dpkg_s(p) for p in samples])
        log(f"  {d}: {s['candidates']} candidate files; test {len(s['test_files'])} files, calib "
            f"{len(s['calib_files'])} files, train {len(s['train_files'])} files / {len(s['train'])} bytes; "
            f"{s['skipped']} skipped, {s['duplicates']} duplicates; {len(pkg_bytes)} packages; unigram "
            f"entropy {info_data[d]['unigram_bits']:.3f} bits/byte")
    versions = dpkg_versions(all_pkgs)
    for d in DOMAINS:
        s = info_data[d]
        top = [p for p, _ in s["pkg_bytes"].most_common(12)]
        s["packages"] = [(p, versions.get(p, versions.get(p.split(":")[0], "?")), s["pkg_files"][p]) for p in top]
    mix = b"".join(trains[d].tobytes() for d in DOMAINS)
    mix_unigram = unigram_entropy(mix)
    log(f"  train mixture unigram entropy {mix_unigram:.4f} nats = {mix_unigram / math.log(2):.4f} bits/byte")
    times["data"] = time.perf_counter() - t_start

    # ---- base
    log("== base")
    t = time.perf_counter()
    torch.manual_seed(INIT_SEED)
    base = LlamaForCausalLM(make_config())
    n_params = sum(p.numel() for p in base.parameters())
    log(f"  parameters: {n_params}")
    curve = train(base, [trains[d] for d in DOMAINS], BASE, "base", log)
    times["base"] = time.perf_counter() - t
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    # ---- experts
    models = {"base": base}
    for i, d in enumerate(DOMAINS):
        log(f"== expert {d}")
        t = time.perf_counter()
        expert = LlamaForCausalLM(make_config())
        expert.load_state_dict(base_state)
        recipe = dict(EXPERT, seed=EXPERT["seed"] + i)
        train(expert, [trains[d]], recipe, d, log)
        models[d] = expert
        times[d] = time.perf_counter() - t

    # ---- save, reload, evaluate
    log("== save + evaluate")
    t = time.perf_counter()
    ppl_f32, ppl_bf16 = {}, {}
    for name, model in models.items():
        ppl_f32[name] = {d: perplexity(model, tests[d]) for d in DOMAINS}
        path = os.path.join(out, name)
        save_bf16(model, path)
        reloaded = load_f32(path)
        ppl_bf16[name] = {d: perplexity(reloaded, tests[d]) for d in DOMAINS}
        log(f"  {name:7s} f32  " + "  ".join(f"{d} {ppl_f32[name][d]:.4f}" for d in DOMAINS))
        log(f"  {name:7s} bf16 " + "  ".join(f"{d} {ppl_bf16[name][d]:.4f}" for d in DOMAINS))
    times["eval"] = time.perf_counter() - t
    with open(os.path.join(out, "reference_ppl.json"), "w") as f:
        json.dump({m: {d: round(v, 6) for d, v in row.items()} for m, row in ppl_bf16.items()}, f, indent=2)
        f.write("\n")

    margins = {}
    ok = True
    for d in DOMAINS:
        others = min(ppl_bf16[m][d] for m in ["base"] + DOMAINS if m != d)
        margins[d] = others / ppl_bf16[d][d]
        if margins[d] <= 1.0:
            ok = False
    times["total"] = time.perf_counter() - t_start
    ckpt_bytes = os.path.getsize(os.path.join(out, "base", "model.safetensors"))
    write_readme(out, dict(
        platform=f"{platform.system()} {platform.machine()}", data=info_data, n_params=n_params,
        ckpt_bytes=ckpt_bytes, times=times, base_final_loss=curve[-1][1], mix_unigram_nats=mix_unigram,
        ppl_bf16=ppl_bf16, ppl_f32=ppl_f32, margins=margins))
    log("== times " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    log("== margins " + ", ".join(f"{d} {v:.3f}x" for d, v in margins.items()))
    if not ok:
        sys.exit("an expert is not the best model on its own domain")


if __name__ == "__main__":
    main()
