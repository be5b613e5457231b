"""`herd rm`: train a reward model on rated pairs, score rows with it, evaluate it per rating."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors import safe_open

import herd
from herd.checkpoint.io import save_herd_folder
from herd.posttrain.reward import conversation_ids, load_reward_model, score_sequences
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.sums_tokenizer import sums_tokenizer

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)
RATINGS = ["significantly better", "better", "slightly better", "unsure"]


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Sums: the chosen reply is right, the rejected one off by 1-4; a larger error is rated
    a stronger preference (rating as a string or as its level)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        level = rng.randint(0, 3)
        rows.append(
            {
                "prompt": f"What is {a} plus {b}?",
                "chosen": f"{a + b}",
                "rejected": f"{a + b + level + 1}",
                "rating": RATINGS[3 - level] if i % 2 else level,
            }
        )
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    tok = sums_tokenizer(root)
    # tied, as small chat models are: the reward model unties (its head is its own matrix)
    config = herd.ModelConfig(vocab_size=tok.vocab_size, tie_embeddings=True, **CONFIG)
    base = root / "base"
    save_herd_folder(config, herd.build_model(config, seed=0).state_dict(), base, tok.files())
    data = root / "pairs.jsonl"
    rows = [json.dumps(r) for r in _pairs(48)]
    rows.insert(2, json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b", "rating": "meh"}))
    data.write_text("\n".join(rows) + "\n")
    return base, data, root


def _args(base, data, out, *extra):
    return [
        "--model.checkpoint", base, "--data.path", data, "--data.seq_len", "64",
        "--data.batch_size", "4", "--train.log_every", "1", "--train.out", out,
        "--optim.lr", "3e-3", "--data.val_fraction", "0.25", "--rm.margin", "small",
        *extra,
    ]  # fmt: skip


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_rm_trains_scores_and_evaluates(setup, tmp_path):
    base, data, _ = setup
    out = tmp_path / "run"
    proc = herd_cli("rm", *_args(base, data, out, "--train.eval_every", "5"))
    assert "48 of 49 pairs kept (1 malformed" in proc.stderr
    assert f"{data}:3: rating 'meh'" in proc.stderr
    held_out = int(proc.stderr.split(" held out")[0].rsplit(", ", 1)[1].split()[0])
    # one epoch by default, warm-up 3% of it (rounded)
    steps = math.ceil((48 - held_out) / 4)
    assert f"{steps} steps, {round(0.03 * steps)} of warm-up, margins 'small'" in proc.stderr
    records = [r for r in _metrics(out) if "loss" in r]
    assert records[-1]["step"] == steps
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert name in records[0]
    val = [r for r in _metrics(out) if "val_loss" in r][-1]
    assert val["step"] == steps
    levels = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    assert sum(val[f"val_pairs/{k}"] for k in levels if f"val_pairs/{k}" in val) == held_out
    assert any(f"val_rewards/accuracies/{k}" in val for k in levels)
    assert (out / "plots" / "rewards.png").is_file()
    # the checkpoint: a herd folder marked as a reward model with a [1, dim] score head
    ckpt = out / "checkpoints" / f"step-{steps:08d}"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["head"] == "score" and config["model"]["tie_embeddings"] is False
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        assert f.get_tensor("output.weight").shape == (1, 64)
        # the body is the start's (trained from it), the embedding is no longer the head
        assert f.get_tensor("embed.weight").shape[0] > 1

    # score: rows with a plain or a message prompt; --out keeps every row, adds its score
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": "What is 2 plus 3?", "response": "5", "id": 1})
        + "\n"
        + json.dumps(
            {
                "prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
                "response": {"role": "assistant", "content": "9"},
            }
        )
        + "\n"
    )
    scored = tmp_path / "scores.jsonl"
    herd_cli_inprocess("rm", "score", ckpt, "--data", rows, "--out", scored, "--device", "cpu")
    written = [json.loads(x) for x in scored.read_text().splitlines()]
    assert written[0]["id"] == 1 and len(written) == 2
    # the Python API gives the same scores (herd.posttrain.reward)
    model, tok = load_reward_model(ckpt, "cpu")
    ids = [conversation_ids(tok, "What is 2 plus 3?", r) for r in ("5", "9")]
    direct = score_sequences(model, ids, batch_size=2)
    assert [w["score"] for w in written] == pytest.approx(direct, abs=1e-5)
    # ... and batching changes nothing: one row alone, its logits at its last token
    alone = model(torch.tensor([ids[1]])).squeeze(-1)[0, -1].item()
    assert direct[1] == pytest.approx(alone, abs=1e-5)
    proc = herd_cli_inprocess("rm", "score", ckpt, "--data", rows, "--json", "--device", "cpu")
    assert json.loads(proc.stdout)["scores"] == pytest.approx(direct, abs=1e-5)

    # eval: accuracy per rating level and the plot of the score differences
    report = tmp_path / "eval"
    proc = herd_cli_inprocess(
        "rm", "eval", ckpt, "--data", data, "--out", report, "--json", "--device", "cpu"
    )
    summary = json.loads(proc.stdout)
    assert summary["pairs"] == 48 and set(summary["levels"]) == set(levels)
    assert sum(v["pairs"] for v in summary["levels"].values()) == 48
    assert (report / "score_differences.png").stat().st_size > 1000
    saved = json.loads((report / "eval.json").read_text())
    assert len(saved["levels"]["better"]["differences"]) == saved["levels"]["better"]["pairs"]


def test_rm_errors(setup, tmp_path):
    base, data, _ = setup
    # a bad margin table, a strict run over a bad rating, a language model given to score
    cases = [
        (["rm", *_args(base, data, tmp_path / "a", "--rm.margin", "huge")], "rm.margin 'huge'"),
        (
            ["rm", *_args(base, data, tmp_path / "b", "--data.strict", "true")],
            f"{data}:3: rating 'meh'",
        ),
        (["rm", "score", base, "--data", data], "a language model, but this command needs a"),
    ]
    for argv, expected in cases:
        one_line_error(herd_cli_inprocess(*argv, check=False), expected)
    # a score row without a response: named by FILE:LINE, and an existing --out is kept
    run = tmp_path / "run"
    herd_cli_inprocess("rm", *_args(base, data, run, "--train.steps", "1"))
    ckpt = run / "checkpoints" / "step-00000001"
    # a reward model is no text generator: said before any weights are read
    one_line_error(
        herd_cli_inprocess("generate", ckpt, "--prompt", "hi", check=False),
        "a reward model, but this command needs a language model",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "response": "yo"}) + '\n{"prompt": "x"}\n')
    kept = tmp_path / "kept.jsonl"
    kept.write_text("earlier scores\n")
    proc = herd_cli("rm", "score", ckpt, "--data", bad, "--out", kept, check=False)
    one_line_error(proc, f"{bad}:2: expected an object with 'prompt' and 'response'")
    assert kept.read_text() == "earlier scores\n"


def test_rm_resumes_to_the_same_loss(setup, tmp_path):
    """Stopped after step 3 and resumed with `herd rm --resume`: the same last loss as a run
    straight through, and the resolved one-epoch schedule read back from config.toml."""
    from herd.posttrain.reward_run import RM_DEFAULTS, rm_data
    from herd.posttrain.sft import load_stage_config
    from herd.train.trainer import Trainer

    base, data, _ = setup
    whole = tmp_path / "whole"
    herd_cli_inprocess("rm", *_args(base, data, whole, "--train.checkpoint_every", "3"))
    again = tmp_path / "again"
    flags = _args(base, data, again, "--train.checkpoint_every", "3")
    pairs = zip(flags[::2], flags[1::2], strict=True)
    run = load_stage_config(None, {k[2:]: str(v) for k, v in pairs}, RM_DEFAULTS)
    Trainer(run, again, data=rm_data(run)).fit(show_progress=False, stop_at=3)
    herd_cli_inprocess("rm", "--resume", again)
    last = [r for r in _metrics(whole) if "loss" in r][-1]
    tail = [r for r in _metrics(again) if "loss" in r][-1]
    assert tail["step"] == last["step"] > 3
    assert tail["loss"] == pytest.approx(last["loss"], rel=1e-5)
