"""herd/posttrain/reward.py, reward_data.py and reward_run.py against direct computations."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.checkpoint.loading import load_weights
from herd.errors import HerdError
from herd.posttrain.preference_batches import PreferenceBatches, pair_batch
from herd.posttrain.reward import (
    MARGINS,
    pair_margin,
    parse_rating,
    ranking_loss,
    reward_pad_id,
)
from herd.posttrain.reward_data import load_reward_pairs
from herd.posttrain.reward_run import RewardObjective, resolve_schedule
from herd.train.config import load_run_config
from tests.sums_tokenizer import sums_tokenizer

# Llama 2 Table 27, written out: significantly better, better, slightly better, negligibly/unsure
PAPER = {"small": [1.0, 2 / 3, 1 / 3, 0.0], "large": [3.0, 2.0, 1.0, 0.0], "none": [0.0] * 4}
NAMES = ["significantly better", "better", "slightly better", "negligibly better / unsure"]


def _direct_loss(chosen, rejected, margins) -> float:
    """mean of −log σ(r_c − r_r − m), σ(x) = 1 / (1 + e^−x), in float64 by hand."""
    terms = [
        math.log1p(math.exp(-(c - r - m)))
        for c, r, m in zip(chosen, rejected, margins, strict=True)
    ]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("table", ["none", "small", "large"])
def test_ranking_loss_with_each_margin_table_is_the_direct_computation(table):
    rng = random.Random(table)
    names = [rng.choice(NAMES) for _ in range(64)]
    chosen = [rng.uniform(-3, 3) for _ in names]
    rejected = [rng.uniform(-3, 3) for _ in names]
    margins = [PAPER[table][NAMES.index(n)] for n in names]
    ours = [pair_margin(parse_rating(n), None, table) for n in names]
    assert ours == pytest.approx(margins, abs=1e-12)
    c, r = torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    loss, metrics = ranking_loss(c, r, torch.tensor(ours, dtype=torch.float64))
    assert loss.item() == pytest.approx(_direct_loss(chosen, rejected, margins), rel=1e-6)
    wins = sum(a > b for a, b in zip(chosen, rejected, strict=True)) / len(names)
    assert metrics["rewards/accuracies"].item() == pytest.approx(wins)
    diff = sum(a - b for a, b in zip(chosen, rejected, strict=True)) / len(names)
    assert metrics["rewards/margins"].item() == pytest.approx(diff, rel=1e-6)
    # a larger margin asks for a larger gap: the loss grows with it (unless all margins are 0)
    if table != "none":
        assert loss.item() > _direct_loss(chosen, rejected, [0.0] * len(names))


def test_the_tables_and_ratings():
    for table, values in PAPER.items():
        assert [MARGINS[table][3 - i] for i in range(4)] == pytest.approx(values)
    for value, level in [
        ("significantly better", 3),
        ("Significantly_Better", 3),
        ("better", 2),
        ("slightly-better", 1),
        ("negligibly better / unsure", 0),
        ("negligibly better/unsure", 0),
        ("unsure", 0),
        (3, 3),
        (0, 0),
        (2.0, 2),
    ]:
        assert parse_rating(value) == level, value
    for bad in ["much better", 4, -1, 1.5, True, None, [3]]:
        with pytest.raises(ValueError, match="rating"):
            parse_rating(bad)
    assert pair_margin(3, 0.25, "large") == 0.25  # a row's own margin wins
    assert pair_margin(None, None, "large") == 0.0  # no rating: no margin


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward")
    tok = sums_tokenizer(root, 320, repeats=1)
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=tok.vocab_size,
        max_seq_len=128, head="score",
    )  # fmt: skip
    return tok, config, root


def test_objective_loss_is_the_direct_computation_on_single_rows(tiny):
    """The objective's padded, stacked forward and its table look-ups give the loss computed pair
    by pair from unpadded rows, each scored at its last token from the full [1, T, 1] output."""
    tok, config, root = tiny
    rows = [
        {"prompt": "What is 1 plus 2?", "chosen": "3", "rejected": "4 or so", "rating": 3},
        {"prompt": "What is 5 plus 5?", "chosen": "10", "rejected": "9", "rating": "better"},
        {"prompt": "Add 2 and 2.", "chosen": "4", "rejected": "22", "margin": 0.7},
        {"prompt": "What is 0 plus 0?", "chosen": "0", "rejected": "zero, I think"},
        {"prompt": "x", "chosen": "1", "rejected": "2", "margin": "big"},  # malformed
    ]
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_reward_pairs(tok, path, 128, margin="large")
    assert data.counts["malformed"] == 1 and "margin 'big'" in data.problems[0]
    examples = data.examples
    assert [e.margin for e in examples] == [3.0, 2.0, 0.7, 0.0]
    assert [e.level for e in examples] == [3, 2, None, None]

    model = herd.build_model(config, seed=3)
    with torch.no_grad():
        model.output.weight.mul_(30.0)  # scores far enough apart to tell positions apart
    pad = reward_pad_id(tok)
    objective = RewardObjective(PreferenceBatches(examples, 4, pad_id=pad), None)
    objective.prepare(model, 0, torch.device("cpu"))
    micro = pair_batch(examples, [2, 0, 3, 1], pad)
    loss_sum = objective.loss_sum(model, micro)

    def alone(ids):
        return model(torch.tensor([ids])).squeeze(-1)[0, -1].item()

    with torch.no_grad():
        picked = [examples[i] for i in [2, 0, 3, 1]]
        chosen = [alone(e.prompt_ids + e.chosen_ids) for e in picked]
        rejected = [alone(e.prompt_ids + e.rejected_ids) for e in picked]
    expected = _direct_loss(chosen, rejected, [e.margin for e in picked])
    assert loss_sum.item() / 4 == pytest.approx(expected, rel=1e-5)
    metrics = objective.read_metrics()
    assert metrics["rewards/chosen"] == pytest.approx(sum(chosen) / 4, abs=1e-4)
    # gradients reach the body and the head
    loss_sum.backward()
    assert model.output.weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0


def test_a_reward_model_starts_from_a_language_model(tiny, tmp_path):
    tok, config, _ = tiny
    lm_config = config.replace(head="lm", tie_embeddings=True)
    lm = herd.build_model(lm_config, seed=5)
    save_herd_folder(lm_config, lm.state_dict(), tmp_path / "lm", tok.files())
    rm = herd.build_model(config, seed=0)
    head = rm.output.weight.detach().clone()
    load_weights(rm, tmp_path / "lm")
    assert torch.equal(rm.embed.weight, lm.embed.weight)
    assert torch.equal(rm.layers[1].ffn.w2.weight, lm.layers[1].ffn.w2.weight)
    assert torch.equal(rm.output.weight, head) and rm.output.weight.shape == (1, 64)
    assert config.num_params() == sum(p.numel() for p in rm.parameters())
    with pytest.raises(HerdError, match="cannot tie"):
        config.replace(tie_embeddings=True)


def test_one_epoch_and_three_percent_warm_up():
    from herd.posttrain.reward_run import RM_DEFAULTS
    from herd.posttrain.sft import load_stage_config

    run = load_stage_config(None, {"data.batch_size": "8", "train.grad_accum": "2"}, RM_DEFAULTS)
    assert run.optim.lr == 1e-5 and run.optim.min_lr_ratio == 0.1 and run.rm.margin == "none"
    resolve_schedule(run, 1000)  # 1000 pairs, 16 a step
    assert run.train.steps == 63 and run.optim.warmup_steps == 2
    run = load_run_config(None, {"train.steps": "50", "optim.warmup_steps": "5"}, RM_DEFAULTS)
    resolve_schedule(run, 1000)  # given: kept
    assert run.train.steps == 50 and run.optim.warmup_steps == 5
