#!/usr/bin/env python3
"""Tokenization throughput: dume against Hugging Face `tokenizers` (Rust) on one core, same text.

The issue's bar is per core at least as fast as the library. Both sides get the same documents
(blocks of the lines of TEXT, about --document-bytes each, repeated until there are --megabytes)
and one thread: the library with RAYON_NUM_THREADS=1 (`encode_batch`, so Python's per-call cost
is not counted against it), dume as `dume tokenize` on one rank, whose own reported rate
(tokenization only, not reading the JSONL) is taken. The ids are compared too: dume's Megatron
output must equal the library's `encode()` (with the post-processor's special tokens) document
for document. CI does not run this (it needs `tokenizers` and numpy from PyPI).

The fixtures' vocabularies are small (under 1100 tokens); real ones are not, and a large one's
tables no longer fit in cache. So two more cases are trained here, at bench time (about half a
minute, not committed): SmolLM2's pre-tokenizer with its 49,152 tokens and Llama 3's with 128,000
(plus its specials), on the fixtures' training text and a seeded corpus of pseudo-words in the test
text's scripts, Zipf-distributed so that the trainer finds that many merges.

    python3 tools/bench_tokenizer.py                       # every fixture family and the two large cases
    python3 tools/bench_tokenizer.py --large-only
    python3 tools/bench_tokenizer.py path/to/tokenizer.json --megabytes 16
"""
import argparse
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

# One thread, before the library loads: its Rust side reads these when it starts.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_tokenizer_fixtures as fixtures  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizers"
# name: (the fixture builder, its vocabulary size)
LARGE = {"smollm2-49k": (fixtures.smollm2, 49152), "llama3-128k": (fixtures.llama3, 128000)}


def pseudo_words(seed=1, words=1_000_000, distinct=300_000):
    """Lines of Zipf-distributed pseudo-words, each of the letters of one script of the test text
    (Latin, Greek and Cyrillic, the rest), for a trainer to find a large vocabulary's merges in."""
    rng = random.Random(seed)
    letters = {c for c in (FIXTURES / "text.txt").read_text(encoding="utf-8") if c.isalpha()}
    scripts = [sorted(c for c in letters if lo <= ord(c) < hi) for lo, hi in ((0, 0x370), (0x370, 0x530),
                                                                              (0x530, 0x110000))]
    pool = []
    for _ in range(distinct):
        script = rng.choice(scripts)
        pool.append("".join(rng.choice(script) for _ in range(rng.randint(2, 9))))
    sample = rng.choices(pool, [1.0 / (rank + 1) for rank in range(distinct)], k=words)
    return [" ".join(sample[i:i + 12]) for i in range(0, words, 12)]


def write_large(directory):
    """The large cases' tokenizer.json files under `directory`, one folder each (named as the row)."""
    lines = pseudo_words() + fixtures.training_lines()
    paths = []
    for name, (build, vocab_size) in LARGE.items():
        start = time.perf_counter()
        data = build(vocab_size, lines)
        path = pathlib.Path(directory) / name / "tokenizer.json"
        path.parent.mkdir()
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        print(f"# {name}: {len(data['model']['vocab'])} tokens, {len(data['model']['merges'])} merges, trained in "
              f"{time.perf_counter() - start:.0f} s")
        paths.append(str(path))
    return paths


def documents(text_path, megabytes, document_bytes):
    lines = [line for line in pathlib.Path(text_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    docs, size, i, current = [], 0, 0, []
    while size < megabytes * 1e6:
        # A counter keeps repeated lines from being identical strings (no cache hits for free).
        current.append(f"{lines[i % len(lines)]} {i}")
        i += 1
        if sum(len(x) for x in current) >= document_bytes:
            doc = "\n".join(current)
            docs.append(doc)
            size += len(doc.encode("utf-8"))
            current = []
    return docs, size


def read_megatron(prefix):
    idx = pathlib.Path(str(prefix) + ".idx").read_bytes()
    dtype = {4: np.int32, 8: np.uint16}[idx[17]]
    count = int(np.frombuffer(idx, np.uint64, 1, 18)[0])
    lengths = np.frombuffer(idx, np.int32, count, 34)
    tokens = np.fromfile(str(prefix) + ".bin", dtype=dtype)
    return np.split(tokens.astype(np.int64), np.cumsum(lengths)[:-1])


def bench(tokenizer_path, dume, docs, size, repeats):
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.encode_batch(docs[:10])  # warm up
    best, expected = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        expected = tokenizer.encode_batch(docs)
        best = min(best, time.perf_counter() - start)
    hf = size / 1e6 / best

    with tempfile.TemporaryDirectory() as tmp:
        jsonl = pathlib.Path(tmp) / "docs.jsonl"
        jsonl.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        rate = 0.0
        for _ in range(repeats):
            out = subprocess.run([dume, "tokenize", str(jsonl), "--tokenizer", str(tokenizer_path), "--output",
                                  f"{tmp}/out", "--force"], capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode != 0:
                sys.exit(f"dume tokenize failed: {out.stderr.strip()}")
            rate = max(rate, float(re.search(r"\(([0-9.]+) MB/s,", out.stdout).group(1)))
        got = read_megatron(f"{tmp}/out")
    same = len(got) == len(expected) and all(np.array_equal(g, e.ids) for g, e in zip(got, expected))
    tokens = sum(len(e.ids) for e in expected)
    return hf, rate, same, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizers", nargs="*", help="tokenizer.json files (default: every fixture family)")
    parser.add_argument("--text", default=str(FIXTURES / "text.txt"))
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--document-bytes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--dume", default=str(ROOT / "build" / "pipeline" / "dume"))
    parser.add_argument("--large-only", action="store_true", help="only the 49k and 128k vocabularies")
    parser.add_argument("--no-large", action="store_true", help="without the 49k and 128k vocabularies")
    args = parser.parse_args()

    docs, size = documents(args.text, args.megabytes, args.document_bytes)
    with tempfile.TemporaryDirectory() as large_dir:
        paths = args.tokenizers
        if not paths:
            paths = [] if args.large_only else sorted(str(p) for p in FIXTURES.glob("*/tokenizer.json")
                                                      if p.parent.name != "components")
            if not args.no_large:
                paths += write_large(large_dir)
        print(f"# {size / 1e6:.2f} MB in {len(docs)} documents of ~{args.document_bytes} bytes; one core each; "
              f"best of {args.repeats}")
        print(f"{'tokenizer':<12} {'vocab':>7} {'tokens':>9} {'tokenizers MB/s':>16} {'dume MB/s':>10} {'ratio':>6}  ids")
        failed = False
        for path in paths:
            hf, rate, same, tokens = bench(path, args.dume, docs, size, args.repeats)
            name = pathlib.Path(path).parent.name
            vocab = Tokenizer.from_file(path).get_vocab_size()
            print(f"{name:<12} {vocab:>7} {tokens:>9} {hf:>16.2f} {rate:>10.2f} {rate / hf:>5.1f}x  "
                  f"{'equal' if same else 'DIFFER'}")
            failed |= not same
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
