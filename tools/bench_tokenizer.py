#!/usr/bin/env python3
"""Times Hugging Face `tokenizers` on one thread, the bar dume's tokenizer is held to (per core at
least as fast), and optionally a dume command on the same text.

The documents are the lines of TEXT (tests/fixtures/tokenizers/text.txt by default) repeated until
there are --megabytes of them; each is encoded with add_special_tokens=False.

    python3 tools/bench_tokenizer.py tests/fixtures/tokenizers/llama3/tokenizer.json
    python3 tools/bench_tokenizer.py TOKENIZER_JSON --megabytes 8 \\
        --dume 'build/pipeline/dume tokenize --tokenizer {tokenizer} --input {documents}'

--dume is a command template: {tokenizer} is the tokenizer.json, {documents} a file with one
document per line written for it; its wall time is reported next to the library's.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

# One thread, before the library loads: its Rust side reads these when it starts.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def documents(text_path, megabytes):
    lines = [line for line in pathlib.Path(text_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    docs, size, i = [], 0, 0
    while size < megabytes * 1e6:
        # A line number keeps repeated documents from being identical strings end to end.
        doc = f"{lines[i % len(lines)]} {i}"
        docs.append(doc)
        size += len(doc.encode("utf-8"))
        i += 1
    return docs, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", help="a tokenizer.json")
    parser.add_argument("--text", default=str(ROOT / "tests" / "fixtures" / "tokenizers" / "text.txt"))
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--dume", help="a dume command template to time on the same documents")
    args = parser.parse_args()

    docs, size = documents(args.text, args.megabytes)
    tokenizer = Tokenizer.from_file(args.tokenizer)
    tokenizer.encode(docs[0], add_special_tokens=False)  # warm up
    best, n_tokens = float("inf"), 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        n_tokens = sum(len(tokenizer.encode(doc, add_special_tokens=False).ids) for doc in docs)
        best = min(best, time.perf_counter() - start)
    print(f"tokenizers encode (1 thread):       {size / 1e6:.2f} MB, {len(docs)} documents, {n_tokens} tokens in "
          f"{best:.3f} s = {size / 1e6 / best:.2f} MB/s")
    # encode_batch leaves out Python's per-call cost; with RAYON_NUM_THREADS=1 it is still one thread.
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        n_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(docs, add_special_tokens=False))
        best = min(best, time.perf_counter() - start)
    print(f"tokenizers encode_batch (1 thread): {size / 1e6:.2f} MB, {n_tokens} tokens in {best:.3f} s "
          f"= {size / 1e6 / best:.2f} MB/s")

    if args.dume:
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "documents.txt"
            path.write_text("\n".join(docs) + "\n", encoding="utf-8")
            command = args.dume.format(tokenizer=args.tokenizer, documents=path)
            best_dume = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = subprocess.run(command, shell=True, stdout=subprocess.DEVNULL)
                best_dume = min(best_dume, time.perf_counter() - start)
                if result.returncode != 0:
                    sys.exit(f"dume command failed ({result.returncode}): {command}")
        print(f"dume (whole command):               {size / 1e6:.2f} MB in {best_dume:.3f} s = {size / 1e6 / best_dume:.2f} MB/s")


if __name__ == "__main__":
    main()
