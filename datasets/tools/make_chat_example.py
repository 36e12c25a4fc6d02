#!/usr/bin/env python3
"""Writes datasets/data/chat_example/train.jsonl: 120 short conversations in the `messages`
format (TRL's SFT trainer, most instruction datasets), for the chat example job
(configs/chat.json). Everything is generated here from small word lists and arithmetic, so the
text is original and its answers are right by construction. Deterministic (fixed seed):

    python3 datasets/tools/make_chat_example.py
"""

import json
import random
from pathlib import Path

SEED = 13
OUT = Path(__file__).resolve().parent.parent / "data" / "chat_example" / "train.jsonl"

WORDS = ["apple", "river", "stone", "candle", "garden", "window", "cloud", "lantern",
         "meadow", "pepper", "violin", "harbor", "forest", "pillow", "rocket", "saddle"]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("early", "late"), ("light", "dark"),
             ("full", "empty"), ("open", "closed"), ("fast", "slow"), ("loud", "quiet"),
             ("wet", "dry"), ("old", "new"), ("high", "low"), ("near", "far")]
COLORS = {"grass": "green", "snow": "white", "coal": "black", "a ripe tomato": "red",
          "the clear daytime sky": "blue", "a lemon": "yellow"}
SYSTEMS = ["You are a helpful assistant.", "You answer in one short sentence.",
           "You are a careful tutor."]


def arithmetic(rng):
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    if rng.random() < 0.5:
        return [("user", f"What is {a} plus {b}?"), ("assistant", f"{a} plus {b} is {a + b}.")]
    a, b = max(a, b), min(a, b)
    return [("user", f"What is {a} minus {b}?"), ("assistant", f"{a} minus {b} is {a - b}.")]


def reverse(rng):
    w = rng.choice(WORDS)
    return [("user", f"Spell \"{w}\" backwards."),
            ("assistant", f"\"{w}\" backwards is \"{w[::-1]}\".")]


def upper(rng):
    w = rng.choice(WORDS)
    return [("user", f"Write {w} in capital letters."), ("assistant", w.upper())]


def count(rng):
    w = rng.choice(WORDS)
    return [("user", f"How many letters are in \"{w}\"?"),
            ("assistant", f"\"{w}\" has {len(w)} letters.")]


def opposite(rng):
    a, b = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return [("user", f"What is the opposite of {a}?"),
            ("assistant", f"The opposite of {a} is {b}.")]


def color(rng):
    thing = rng.choice(sorted(COLORS))
    return [("user", f"What color is {thing}?"), ("assistant", f"It is {COLORS[thing]}.")]


def follow_up(rng):
    """Two turns: a sum, then the sum doubled."""
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    return [("user", f"Add {a} and {b}."), ("assistant", f"{a} + {b} = {a + b}."),
            ("user", "Now double it."), ("assistant", f"{a + b} doubled is {2 * (a + b)}.")]


def first_last(rng):
    """Two turns about one word."""
    w = rng.choice(WORDS)
    return [("user", f"What is the first letter of \"{w}\"?"),
            ("assistant", f"The first letter is \"{w[0]}\"."),
            ("user", "And the last?"), ("assistant", f"The last letter is \"{w[-1]}\".")]


TASKS = [arithmetic, reverse, upper, count, opposite, color, follow_up, first_last]


def main():
    rng = random.Random(SEED)
    lines = []
    for i in range(120):
        turns = TASKS[i % len(TASKS)](rng)
        messages = [{"role": r, "content": c} for r, c in turns]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
        lines.append(json.dumps({"messages": messages}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"{OUT}: {len(lines)} conversations")


if __name__ == "__main__":
    main()
