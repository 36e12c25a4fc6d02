#!/usr/bin/env python3
"""Build GPT-2's Hugging Face `tokenizer.json` from the r50k_base BPE ranks, offline.

No hub download is possible where this project is built, so the file is derived from the ranks
that the `tiktoken-rs` crate embeds (`assets/r50k_base.tiktoken`, OpenAI's GPT-2 vocabulary):

* vocabulary: every rank's bytes, written with GPT-2's byte -> unicode table
  (`bytes_to_unicode` from openai/gpt-2 `encoder.py`), plus `<|endoftext|>` = 50256;
* merges: a token of rank r >= 256 is the merge of exactly two lower-rank tokens; they are
  found by running BPE on its bytes with only the ranks below r (the method of
  `transformers`' TikTokenConverter), and the merges are listed in rank order.

Checks, when the crate's copies of GPT-2's original `encoder.json` / `vocab.bpe` are beside the
ranks: the derived vocabulary and merges must equal them.

Usage (Python 3.8+, standard library only):
    python3 datasets/tools/make_gpt2_tokenizer.py [PATH/TO/r50k_base.tiktoken]
writes datasets/data/gpt2/tokenizer.json. Without an argument the ranks are looked up in the
cargo registry (~/.cargo/registry/src/*/tiktoken-rs-*/assets/).
"""
import base64
import glob
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "data", "gpt2", "tokenizer.json")
EOT = "<|endoftext|>"
EOT_ID = 50256


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode map (openai/gpt-2, src/encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def find_ranks():
    if len(sys.argv) > 1:
        return sys.argv[1]
    home = os.path.expanduser("~/.cargo/registry/src")
    hits = sorted(glob.glob(os.path.join(home, "*", "tiktoken-rs-*", "assets", "r50k_base.tiktoken")))
    if not hits:
        sys.exit("r50k_base.tiktoken not found: run `cargo fetch` first or pass its path")
    return hits[-1]


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def bpe(ranks, token, max_rank):
    """Merge `token`'s bytes greedily by lowest rank, using only ranks < max_rank."""
    parts = [bytes([b]) for b in token]
    while True:
        best_i, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best_i, best_rank = i, r
        if best_i is None:
            return parts
        parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2 :]


def main():
    path = find_ranks()
    ranks = load_ranks(path)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert len(ranks) == EOT_ID, f"expected {EOT_ID} ranks, got {len(ranks)}"
    assert sorted(ranks.values()) == list(range(EOT_ID)), "ranks are not 0..50255"
    b2u = bytes_to_unicode()
    show = lambda bs: "".join(b2u[b] for b in bs)

    vocab = {show(tok): rank for tok, rank in ranks.items()}
    vocab[EOT] = EOT_ID
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) == 1:
            continue
        pair = bpe(ranks, tok, rank)
        assert len(pair) == 2, f"rank {rank} {tok!r} does not split into two tokens: {pair}"
        merges.append(f"{show(pair[0])} {show(pair[1])}")

    assets = os.path.dirname(path)
    enc_path, bpe_path = os.path.join(assets, "encoder.json"), os.path.join(assets, "vocab.bpe")
    if os.path.exists(enc_path) and os.path.exists(bpe_path):
        original_vocab = json.load(open(enc_path, encoding="utf-8"))
        original_merges = [
            l for l in open(bpe_path, encoding="utf-8").read().split("\n")[1:] if l
        ]
        assert original_vocab == vocab, "derived vocabulary differs from GPT-2's encoder.json"
        assert original_merges == merges, "derived merges differ from GPT-2's vocab.bpe"
        print("checked: vocabulary == encoder.json, merges == vocab.bpe", file=sys.stderr)

    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": EOT_ID,
                "content": EOT,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": merges,
        },
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes) from {path} (sha256 {sha})", file=sys.stderr)


if __name__ == "__main__":
    main()
