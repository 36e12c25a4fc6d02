#!/usr/bin/env python3
"""Loads one of our checkpoints with Hugging Face `transformers` (model and tokenizer, nothing of
ours) and prints its mean next-token loss over the first windows of a text file, read as our
`eval --data FILE --seq-len T --batch-size B --max-batches N` reads them (docs/design.md, "Data
windows": the text tokenized, one end-of-text appended, windows of T + 1 tokens at multiples of
T, the first B * N of them). Run by hand (needs torch and transformers), e.g.:

    python scripts/hf-check.py runs/pretrain-s/checkpoints/best \
        datasets/data/shakespeare_milton/milton_paradise_regained.txt 128 8 4
    fp8-trainer eval --checkpoint runs/pretrain-s/checkpoints/best --precision fp32 \
        --data datasets/data/shakespeare_milton/milton_paradise_regained.txt \
        --seq-len 128 --batch-size 8 --max-batches 4
"""
import sys

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel


def main():
    ckpt, path, seq, batch, batches = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    model = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    with open(path, encoding="utf-8") as f:
        ids = tokenizer.encode(f.read()) + [tokenizer.eos_token_id]
    windows = [ids[i * seq : i * seq + seq + 1] for i in range(batch * batches)]
    assert all(len(w) == seq + 1 for w in windows), "the text is shorter than the windows asked"
    x = torch.tensor(windows)
    with torch.no_grad():
        logits = model(x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)
        )
    n = sum(p.numel() for p in model.parameters())
    print(f"{ckpt}: transformers {model.config.model_type}, {n} parameters; "
          f"loss {loss.item():.4f} over {x[:, 1:].numel()} tokens")


if __name__ == "__main__":
    main()
