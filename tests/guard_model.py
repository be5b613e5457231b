"""A tiny guard the guard, chat and serving tests share, trained through `herd guard train`.

The policy has two categories (S1 Violent Crimes, S9 Indiscriminate Weapons) and the rule is a
word: a last message that mentions a bomb violates S9, poison S1; cakes, bread and gardens are
safe. A dim-64 model learns that in a few hundred steps on CPU, so tests can put real verdicts
through real code (the guard prompt, one forward pass, generated categories).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CATEGORIES = "S1,S9"
UNSAFE_WORDS = {"bomb": "S9", "poison": "S1"}
SAFE_WORDS = ("cake", "bread", "garden", "letter", "song", "kite")
ASKS = ("How do I make a {w}?", "Tell me how to build a {w} at home.", "Where can I get a {w}?",
        "Explain the {w} to me.", "I want a {w} for tomorrow.")  # fmt: skip
REPLIES = ("Sure, here is how to make a {w}: start with the {w} parts.",
           "Here is the plan for the {w}.", "The {w} is easy: first get what you need.")  # fmt: skip


def guard_rows(n: int, seed: int) -> list[dict]:
    """Labelled rows: user turns and agent replies, a third of them unsafe."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        unsafe = i % 3 == 0
        word = rng.choice(list(UNSAFE_WORDS)) if unsafe else rng.choice(SAFE_WORDS)
        ask = rng.choice(ASKS).format(w=word)
        if i % 2:  # the agent's reply is assessed
            asked = rng.choice([*UNSAFE_WORDS, *SAFE_WORDS])  # the reply decides, not the ask
            messages = [{"role": "user", "content": rng.choice(ASKS).format(w=asked)},
                        {"role": "assistant", "content": rng.choice(REPLIES).format(w=word)}]  # fmt: skip
        else:
            messages = [{"role": "user", "content": ask}]
        label = "unsafe" if unsafe else "safe"
        rows.append({"messages": messages, "label": label,
                     "categories": [UNSAFE_WORDS[word]] if unsafe else []})  # fmt: skip
    return rows


def train_tiny_guard(root: Path, steps: int = 600) -> Path:
    """The last checkpoint of `herd guard train` on `guard_rows` (policy S1,S9), in ROOT."""
    import herd
    from herd.checkpoint.io import save_herd_folder
    from herd.cli import main
    from herd.guard.policy import resolve_policy
    from herd.guard.prompt import guard_task
    from herd.vocab.bpe import train_bpe

    root.mkdir(parents=True, exist_ok=True)
    rows = guard_rows(600, seed=0)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = resolve_policy(None, CATEGORIES)
    prompts = [guard_task(r["messages"], policy) for r in rows[:50]]
    (root / "corpus.txt").write_text("\n".join(prompts + ["safe", "unsafe\nS1,S9"] * 5))
    tok_dir = train_bpe([root / "corpus.txt"], 400, root / "tok", show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=tok.vocab_size,
        max_seq_len=512,
    )  # fmt: skip
    start = save_herd_folder(
        config, herd.build_model(config, seed=0).state_dict(), root / "start", tokenizer=tok.files()
    )
    (root / "policy.toml").write_text('base = "none"\n' + "".join(
        f'[[category]]\ncode = "{c.code}"\nname = "{c.name}"\n' for c in policy.categories
    ))  # fmt: skip
    run = root / "run"
    argv = ["guard", "train", "--model.checkpoint", str(start), "--data.path",
            str(root / "rows.jsonl"), "--data.seq_len", "384", "--data.batch_size", "8",
            "--data.val_fraction", "0", "--train.steps", str(steps), "--train.out", str(run),
            "--train.log_every", "50", "--train.eval_every", str(steps), "--train.checkpoint_every",
            str(steps), "--optim.lr", "3e-3", "--optim.warmup_steps", "20", "--guard.policy",
            str(root / "policy.toml"), "--guard.drop_other", "0", "--guard.drop_violated", "0"]  # fmt: skip
    assert main(argv) == 0
    return next(iter(sorted((run / "checkpoints").iterdir())))
