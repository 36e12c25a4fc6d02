#!/usr/bin/env python3
"""Golden GPT-2 token ids from independent references, for datasets/tests/tokenizers.rs.

References: OpenAI's `tiktoken` (PyPI; its Rust core through Python) built offline from the
r50k_base ranks that the `tiktoken-rs` crate ships (tiktoken's own `get_encoding("gpt2")` would
download them), and Hugging Face `tokenizers` (PyPI) on GPT-2's original encoder.json/vocab.bpe
from the same crate. Both must agree, or the script stops.

Usage: pip install tiktoken==0.14.0 tokenizers==0.23.3
       python3 datasets/tools/make_gpt2_fixtures.py [PATH/TO/tiktoken-rs/assets]
writes datasets/tests/fixtures/gpt2_ids.json, headed by this script's FIXTURE_VERSION and the
sha256 of its source. Bump FIXTURE_VERSION whenever the cases or the references change, and
GPT2_FIXTURE_VERSION in datasets/tests/tokenizers.rs with it.
"""
import base64
import glob
import hashlib
import json
import os
import sys

import tiktoken
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# The fixture format and content version that datasets/tests/tokenizers.rs expects.
FIXTURE_VERSION = 1
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "gpt2_ids.json")
# GPT-2's pre-tokenizer pattern (tiktoken's r50k_base / openai/gpt-2 encoder.py).
PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CASES = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " the",
    "\n\nFirst Citizen:\nBefore we proceed any further, hear me speak.\n",
    "I'm sure you've heard they'll say it's done.",
    "   leading spaces and trailing   ",
    "Numbers: 3.14159, 2024, 1,000,000!",
    "naïve café, Straße, Ελληνικά, русский, 日本語, 한국어 🙂🚀",
    "tab\tseparated\tvalues\r\nwindows line",
    "<|endoftext|> is plain text here",
]


def assets_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    hits = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/tiktoken-rs-*/assets")))
    if not hits:
        sys.exit("tiktoken-rs assets not found: run `cargo fetch` or pass the folder")
    return hits[-1]


def main():
    assets = assets_dir()
    ranks = {}
    for line in open(os.path.join(assets, "r50k_base.tiktoken"), "rb"):
        if line.strip():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    enc = tiktoken.Encoding(
        name="gpt2-offline", pat_str=PAT, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    hf = Tokenizer(models.BPE.from_file(
        os.path.join(assets, "encoder.json"), os.path.join(assets, "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()

    cases = []
    for text in CASES:
        ids = enc.encode_ordinary(text)
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == hf_ids, f"tiktoken and tokenizers disagree on {text!r}: {ids} vs {hf_ids}"
        assert enc.decode(ids) == text
        cases.append({"text": text, "ids": ids})
    with open(os.path.abspath(__file__), "rb") as f:
        source_sha256 = hashlib.sha256(f.read()).hexdigest()
    doc = {
        "generator": "datasets/tools/make_gpt2_fixtures.py",
        "version": FIXTURE_VERSION,
        "generator_sha256": source_sha256,
        "tiktoken": tiktoken.__version__,
        "tokenizers": tokenizers.__version__,
        "cases": cases,
    }
    # One case a line, so a diff of the fixture shows which string changed.
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    text = json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    json.loads(text)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}: {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
