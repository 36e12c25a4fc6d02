#!/usr/bin/env python3
"""Checks by hand that checkpoints fp8-trainer writes are self-contained for Hugging Face:
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load the folder
alone, the tokenizer gives the ids of an independent reference, and `generate` stops at the
end-of-text of generation_config.json. Run by hand (needs transformers and tokenizers; CI checks
the files and our own reload without them):

    cargo run --release -p trainer -- train --config configs/quickstart.json --set steps=2 \
        --set checkpoint_every=2 --set name=hf-bytes --overwrite
    cargo run --release -p trainer -- train --config configs/quickstart.json --set steps=2 \
        --set checkpoint_every=2 --set name=hf-gpt2 --set tokenizer=gpt2 \
        --set model.vocab_size=50257 --overwrite
    python3 trainer/tools/check_hf_checkpoint.py runs/hf-bytes/checkpoints/step-2 bytes
    python3 trainer/tools/check_hf_checkpoint.py runs/hf-gpt2/checkpoints/step-2 gpt2

The references: for `bytes`, a text's UTF-8 bytes; for `gpt2`, the committed
datasets/data/gpt2/tokenizer.json (made from tiktoken's ranks by
datasets/tools/make_gpt2_tokenizer.py and checked there against GPT-2's encoder.json and
vocab.bpe) through the `tokenizers` library, not the checkpoint's own file.
"""

import json
import pathlib
import sys

import tokenizers
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
TEXT = (
    "From fairest creatures we desire increase,\n"
    "That thereby beauty's rose might never die, naïve café — 日本語 🙂"
)


def main(checkpoint: str, kind: str) -> None:
    folder = pathlib.Path(checkpoint)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    ids = tok(TEXT)["input_ids"]
    if kind == "bytes":
        expected = list(TEXT.encode("utf-8"))
    elif kind == "gpt2":
        reference = tokenizers.Tokenizer.from_file(str(REPO / "datasets/data/gpt2/tokenizer.json"))
        expected = reference.encode(TEXT).ids
    else:
        raise SystemExit(f"kind must be bytes or gpt2, not {kind!r}")
    assert ids == expected, f"ids differ:\n{ids}\n{expected}"
    assert tok.decode(ids) == TEXT, tok.decode(ids)
    assert tok.eos_token_id == generation["eos_token_id"], (tok.eos_token_id, generation)
    prompt = tok("ROMEO:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    print(f"{folder}: {len(ids)} ids equal the reference; eos {tok.eos_token_id}; "
          f"{type(tok).__name__}; greedy: {tok.decode(out[0])!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
