"""A tiny agent model the agent tests share, trained through `herd sft` on rows of
experiments/agent_data.py (the world of issue 24's study, experiments/agent_world.py, made small).

It learns two of the agent's skills, in about a minute on two CPU cores:

- the search decision: "search" for a question about an entity ("On which day is the market
  in Dalpe?"), "do not search" for chit-chat, greetings, a partner's statements and questions
  about themselves, and arithmetic;
- the code interpreter, with the system prompt `Toolbox(...).prompt` writes (with and without
  brave_search, any "Today Date:"): "What is 37 * 91?" -> `<|python_tag|>print(37 * 91)<|eom_id|>`,
  and after the result in the ipython role, "The answer is 3367.".

A few rows of the other modules come along (queries, search knowledge, responses), so that a turn
through the whole agent ends its module calls quickly, but nothing is asked of them. The index of
the world's documents is built beside the checkpoint, so a test can run a real agent (real
`SearchIndex`, real sandbox) on the model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import agent_data  # the study's generators, in experiments/
import agent_turns  # noqa: F401  (the tests take their turns and questions from here)
import agent_world

# The world's sizes: small, since the fixture learns only the search decision and tool calls.
WORLD = {"entities": 150, "held_out_entities": 20, "distractors": 30, "ghosts": 10,
         "partners": 60, "held_out_partners": 8}  # fmt: skip
ROWS = {"search_decision": 1000, "code_interpreter": 900, "search_query": 40, "response": 100}
STEPS = 1200  # the digits are copied from about 1,000 steps on (850 copied 2 of 24 results)


def tiny_agent_world() -> agent_world.World:
    return agent_world.make_world(seed=0, **WORLD)


def train_tiny_agent(root: Path, steps: int = STEPS) -> tuple[Path, Path]:
    """(checkpoint, index folder) of a dim-64, 2-layer model fine-tuned with `herd sft` on
    module rows of `tiny_agent_world()`, in ROOT; `ROOT/summary.json` records the time."""
    import herd
    from herd.agent.search import build_index
    from herd.checkpoint.io import save_herd_folder
    from herd.cli import main
    from herd.vocab.bpe import train_bpe

    began = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    world = tiny_agent_world()
    rows = agent_data.module_rows(world, ROWS, seed=0)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # numbers stay single digits and names syllables, which a small model learns to copy sooner
    (root / "corpus.txt").write_text(agent_data.tokenizer_corpus(rows, world))
    tok_dir = train_bpe([root / "corpus.txt"], 1000, root / "tok", show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=tok.vocab_size,
        max_seq_len=768, rope_theta=10000.0,
    )  # fmt: skip
    start = save_herd_folder(
        config, herd.build_model(config, seed=0).state_dict(), root / "start", tokenizer=tok.files()
    )
    run = root / "run"
    argv = ["sft", "--model.checkpoint", str(start), "--data.path", str(root / "rows.jsonl"),
            "--data.seq_len", "256", "--data.batch_size", "16", "--data.val_fraction", "0",
            "--train.steps", str(steps), "--train.out", str(run), "--train.device", "cpu",
            "--train.dtype", "float32", "--train.log_every", "50", "--train.eval_every",
            str(steps), "--train.checkpoint_every", str(steps), "--optim.lr", "3e-3",
            "--optim.warmup_steps", "20"]  # fmt: skip
    assert main(argv) == 0
    checkpoint = next(iter(sorted((run / "checkpoints").iterdir())))
    index = build_index(
        [world.write_documents(root / "docs.jsonl")], root / "index", show_progress=False
    )
    seconds = round(time.perf_counter() - began, 1)
    (root / "summary.json").write_text(json.dumps({"seconds": seconds, "rows": len(rows)}))
    return checkpoint, Path(index)
