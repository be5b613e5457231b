"""`herd rm` under torchrun: two gloo processes on CPU give one process's losses, metrics and
per-level validation at the same global batch (the [1, dim] score head sharded unevenly by
FSDP2), and their sharded checkpoint resumes in one process."""

from __future__ import annotations

import json
import random
import shutil

import pytest

import herd
from herd.checkpoint.io import save_herd_folder
from tests.dist.launch import torchrun
from tests.sums_tokenizer import sums_tokenizer

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)
RATINGS = ["significantly better", "better", "slightly better", "unsure"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm-dist")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **CONFIG)
    save_herd_folder(
        config, herd.build_model(config, seed=0).state_dict(), root / "base", tok.files()
    )
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        a, b, level = rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 3)
        rows.append(
            {
                "prompt": f"What is {a} plus {b}?",
                "chosen": f"{a + b}",
                "rejected": f"{a + b + level + 1}",
                "rating": RATINGS[3 - level],
            }
        )
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _values(root, out, **extra) -> dict[str, str]:
    values = {
        "model.checkpoint": root / "base",
        "data.path": root / "pairs.jsonl",
        "data.seq_len": 64,
        "data.batch_size": 4,
        "data.val_fraction": 0.35,
        "train.steps": 6,
        "train.log_every": 1,
        "train.eval_every": 3,
        "train.checkpoint_every": 3,
        "optim.lr": "3e-3",
        "optim.warmup_steps": 1,
        "rm.margin": "large",
        "train.out": out,
        **extra,
    }
    return {k: str(v) for k, v in values.items()}


def _records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same(a, b, tol: float = 1e-5) -> None:
    """The same losses and validation numbers within `tol` (the rewards/* batch metrics are the
    logging process's pairs, as DPO's are)."""
    x, y = _records(a), _records(b)
    assert len(x) == len(y) == 8  # six steps, validation after 3 and 6
    for p, q in zip(x, y, strict=True):
        keys = {k for k in p if k == "loss" or k.startswith(("val_", "step"))}
        assert keys == {k for k in q if k == "loss" or k.startswith(("val_", "step"))}
        for k in keys:
            assert q[k] == pytest.approx(p[k], abs=tol), k
    assert "rewards/accuracies" in y[0]


def test_rm_two_processes_match_one_and_resume_in_one(setup, tmp_path):
    from herd.posttrain.reward_run import RM_DEFAULTS, rm_data
    from herd.posttrain.sft import load_stage_config
    from herd.train.config import load_run_config
    from herd.train.trainer import Trainer

    one, two = tmp_path / "one", tmp_path / "two"
    # one process at batch 2 with two micro-batches: the same pairs per micro-batch as each
    # process of two at batch 4
    small = _values(setup, one, **{"data.batch_size": "2", "train.grad_accum": "2"})
    run = load_stage_config(None, small, RM_DEFAULTS)
    Trainer(run, one, data=rm_data(run)).fit(show_progress=False)
    flags = [t for k, v in _values(setup, two).items() for t in (f"--{k}", v)]
    proc = torchrun(29541, "-m", "herd", "rm", *flags)
    assert proc.stderr.count("30 pairs to train on, 18 held out") == 1  # rank 0 reports
    _same(one, two)
    val = [r for r in _records(two) if "val_loss" in r][-1]
    assert sum(v for k, v in val.items() if k.startswith("val_pairs/")) == 18

    # killed after step 3, resumed in one process from the two processes' shards
    again = tmp_path / "again"
    shutil.copytree(two, again)
    shutil.rmtree(again / "checkpoints" / "step-00000006")
    config = load_run_config(str(again / "config.toml"), {})
    trainer = Trainer(config, again, resume=True, data=rm_data(config))
    assert trainer.step == 3
    trainer.fit(show_progress=False)
    _same(one, again)
