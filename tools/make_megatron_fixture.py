#!/usr/bin/env python3
"""Write a small Megatron-LM indexed dataset with megatron-core's own writer, and what its reader sees.

``tests/fixtures/megatron/small.{bin,idx}`` are written by megatron-core's
``IndexedDatasetBuilder`` (uint16 ids, as ``DType.optimal_dtype`` picks for a
vocabulary below 65500): documents added whole with ``add_document`` and
documents of several sequences added with ``add_item`` + ``end_document``.
``small.json`` holds the sequences, lengths, pointers and document indices as
megatron-core's ``IndexedDataset`` reads them back; dume's tests read the pair
and compare against it.

The fixture is committed.  CI does NOT run this script: it needs megatron-core
(``pip install --no-deps megatron-core``), torch and numpy.  Seeded, so a re-run
with the same library versions writes the same bytes.

Usage:
    python3 tools/make_megatron_fixture.py [--out tests/fixtures/megatron]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

VOCAB_SIZE = 50257  # GPT-2's: above 256 (so not uint8) and below 65500 (so uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "megatron"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, "small")

    dtype = DType.optimal_dtype(VOCAB_SIZE)
    assert dtype == numpy.uint16, dtype
    rng = numpy.random.default_rng(20240612)

    def ids(n: int) -> torch.Tensor:
        # Some ids above 32767 so that a reader that takes uint16 for int16 goes wrong.
        return torch.from_numpy(rng.integers(0, VOCAB_SIZE, size=n, dtype=numpy.int64))

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    # A whole document, one sequence.
    first = ids(300)
    builder.add_document(first, [len(first)])
    # A document of three sequences, one item at a time.
    for n in (120, 250, 37):
        builder.add_item(ids(n))
    builder.end_document()
    # A document of two sequences given at once.
    second = ids(180)
    builder.add_document(second, [100, 80])
    # One-token and ordinary documents.
    builder.add_document(ids(1), [1])
    builder.add_document(ids(212), [212])
    builder.finalize(prefix + ".idx")

    dataset = IndexedDataset(prefix)
    sequences = [dataset[i].tolist() for i in range(len(dataset))]
    expected = {
        "generator": "megatron-core IndexedDatasetBuilder; read back with IndexedDataset",
        "vocab_size": VOCAB_SIZE,
        "dtype_code": DType.code_from_dtype(dtype),
        "sequence_lengths": dataset.sequence_lengths.tolist(),
        "sequence_pointers": dataset.index.sequence_pointers.tolist(),
        "document_indices": dataset.document_indices.tolist(),
        "sequences": sequences,
    }
    with open(prefix + ".json", "w", encoding="utf-8") as out:
        json.dump(expected, out, separators=(",", ":"))
        out.write("\n")
    sizes = {ext: os.path.getsize(prefix + ext) for ext in (".bin", ".idx", ".json")}
    print(f"wrote {prefix}.{{bin,idx,json}}: {sizes}")


if __name__ == "__main__":
    main()
