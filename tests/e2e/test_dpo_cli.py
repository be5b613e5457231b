"""`herd dpo`: preference optimisation of a checkpoint through the pretraining engine."""

from __future__ import annotations

import json
import math
import random

import pytest
from safetensors import safe_open

import herd
from herd.checkpoint.io import save_herd_folder
from herd.posttrain.reference_tables import load_reference_logps, reference_files
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.sums_tokenizer import sums_tokenizer

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)


def _pairs(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic questions: the chosen reply is the sum, the rejected one is off by one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                "chosen": [{"role": "assistant", "content": f"{a + b}"}],
                "rejected": [{"role": "assistant", "content": f"{a + b + 1}"}],
            }
        )
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **CONFIG)
    base = root / "base"
    save_herd_folder(config, herd.build_model(config, seed=0).state_dict(), base, tok.files())
    data = root / "pairs.jsonl"
    rows = [json.dumps(r) for r in _pairs(32)]
    rows.insert(3, json.dumps({"prompt": "hi", "chosen": "", "rejected": "no"}))
    data.write_text("\n".join(rows) + "\n")
    return base, data


def _args(base, data, out, *extra):
    return [
        "--model.checkpoint", base, "--data.path", data, "--data.seq_len", "64",
        "--data.batch_size", "4", "--train.steps", "8", "--train.log_every", "1",
        "--train.checkpoint_every", "4", "--train.out", out, "--optim.lr", "3e-3",
        "--optim.warmup_steps", "1", "--data.val_fraction", "0.25", "--train.eval_every", "4",
        *extra,
    ]  # fmt: skip


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_trains_against_the_start_and_resumes(setup, tmp_path):
    base, data = setup
    out = tmp_path / "run"
    proc = herd_cli("dpo", *_args(base, data, out, "--dpo.alpha", "0"))
    assert "32 of 33 pairs kept (1 malformed" in proc.stderr and f"{data}:4:" in proc.stderr
    held_out = int(proc.stderr.split(" held out")[0].rsplit(", ", 1)[1].split()[0])
    assert 0 < held_out < 32
    records = [r for r in _metrics(out) if "loss" in r]
    # the first step's policy is the reference: every log-ratio is 0 and the loss is log 2
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"):
        assert name in records[-1]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["rewards/margins"] > 0
    # the start's log-probs of each pair set, stored beside the data; the run folder names them
    tables = reference_files(out)
    assert f"tables in {tables['train'].parent} (beside the data)" in proc.stderr
    assert tables["train"].parent == data.with_name(data.name + ".herd-reference")
    with safe_open(tables["train"], "pt") as f:
        rows = f.get_tensor("reference_logps").shape[0]
        assert f.metadata()["complete"] == "true" and rows == 32 - held_out
    assert load_reference_logps(tables["val"]).shape == (held_out, 2)
    # held-out pairs against their own reference (log 2 at the start): the policy has moved
    val = [r for r in _metrics(out) if "val_loss" in r]
    assert [r["step"] for r in val] == [4, 8]
    assert all(abs(r["val_loss"] - math.log(2)) > 1e-4 for r in val)
    assert "val_rewards/accuracies" in val[-1] and "val_rewards/margins" in val[-1]
    assert (out / "plots" / "rewards.png").is_file()

    # stopped at step 4 and resumed: the reference is read, not recomputed; same last loss.
    # The first part already reads the tables the run above stored: same start, same pairs.
    from herd.posttrain.dpo_run import DPO_DEFAULTS, dpo_data
    from herd.posttrain.sft import load_stage_config
    from herd.train.trainer import Trainer

    again = tmp_path / "again"
    flags = _args(base, data, again, "--dpo.alpha", "0")
    pairs = zip(flags[::2], flags[1::2], strict=True)
    run = load_stage_config(None, {k[2:]: str(v) for k, v in pairs}, DPO_DEFAULTS)
    Trainer(run, again, data=dpo_data(run, again)).fit(show_progress=False, stop_at=4)
    reference = reference_files(again)["train"]
    assert reference == tables["train"]
    stamp = reference.stat().st_mtime_ns
    proc = herd_cli_inprocess("dpo", "--resume", again)
    assert f"dpo reference (train): reusing {reference}" in proc.stderr
    assert reference.stat().st_mtime_ns == stamp
    tail = [r for r in _metrics(again) if "loss" in r][-1]
    assert tail["step"] == 8 and tail["loss"] == pytest.approx(records[-1]["loss"], rel=1e-5)


def test_dpo_errors(setup, tmp_path):
    base, data = setup
    one_line_error(
        herd_cli_inprocess("dpo", "--data.path", data, check=False), "[model] checkpoint is empty"
    )
    one_line_error(
        herd_cli_inprocess("dpo", *_args(base, data, tmp_path / "s", "--data.strict", "true"),
                           check=False),
        f"{data}:4:",
    )  # fmt: skip


def test_runs_share_the_reference_beside_the_data(setup, tmp_path):
    """A sweep's runs from one start on one data file compute the reference once; another
    start's, or a damaged table, is computed anew."""
    import shutil

    import torch
    from safetensors.torch import save_file

    base, shared = setup
    data = tmp_path / "pairs.jsonl"  # a data file of its own: nothing stored beside it yet
    shutil.copy(shared, data)

    def run(name, *extra, start=base):
        flags = _args(start, data, tmp_path / name, "--dpo.alpha", "0", "--train.steps", "1")
        proc = herd_cli_inprocess("dpo", *flags, *extra)
        first = next(r for r in _metrics(tmp_path / name) if "loss" in r)
        # the first step's policy is the start: log 2 only against the start's own log-probs
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
        return proc.stderr, reference_files(tmp_path / name)

    err, tables = run("a")
    assert "dpo reference (train): computing" in err
    err, again = run("b", "--optim.lr", "1e-3")  # another learning rate: the same table
    assert again == tables and f"dpo reference (train): reusing {tables['train']}" in err
    assert "computing" not in err

    other = tmp_path / "other"  # another start: its own tables
    shutil.copytree(base, other)
    err, moved = run("c", start=other)
    assert "dpo reference (train): computing" in err and moved["train"] != tables["train"]
    assert tables["train"].is_file()

    # a table rewritten under its metadata (other numbers) is not trusted
    with safe_open(tables["train"], "pt") as f:
        rows, metadata = f.get_tensor("reference_logps").shape[0], f.metadata()
    save_file({"reference_logps": torch.full((rows, 2), -50.0)}, tables["train"], metadata)
    err, _ = run("d")
    assert "damaged" in err and "recomputing" in err
