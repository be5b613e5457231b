"""One optimizer step: exact gradient accumulation for every objective (float64 on CPU), honest
step metrics, a device-side guard for non-finite gradients, no host reads between log steps, and
blocks compiled one by one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from herd.model.masks import PackedAttention
from herd.train.step import accumulate_gradients
from herd.train.trainer import Trainer
from tests.unit.test_trainer import _config, data  # noqa: F401 - the shared prepared shards

OBJECTIVES = ["nxtuni", "nxtpre", "mskuni", "mskbi"]


def _trainer(data, out: Path, objective: str, batch: int, accum: int, **over) -> Trainer:  # noqa: F811
    values = {
        "data.objective": objective,
        "data.batch_size": str(batch),
        "train.grad_accum": str(accum),
        "train.param_dtype": "float64",
        **over,
    }
    return Trainer(_config(data, out, **values), out)


def _gradients(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor], list]:
    batch = trainer.loader.next()
    loss, _ = accumulate_gradients(trainer.model, batch, trainer.device, trainer._autocast)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    return float(loss), grads, batch


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_accumulated_micro_batches_equal_one_large_batch(tmp_path, data, objective):  # noqa: F811
    """grad_accum = 4 at batch 2 is exactly grad_accum = 1 at batch 8: the same rows, and every
    micro-batch's summed loss divided by the step's total number of targets."""
    small = _trainer(data, tmp_path / "small", objective, batch=2, accum=4)
    large = _trainer(data, tmp_path / "large", objective, batch=8, accum=1)
    loss_small, grads_small, batch = _gradients(small)
    loss_large, grads_large, _ = _gradients(large)
    assert loss_small == pytest.approx(loss_large, rel=0, abs=1e-6)
    for name, g in grads_large.items():
        torch.testing.assert_close(grads_small[name], g, rtol=0, atol=1e-6, msg=name)
    # What the test guards against: the mean of micro-batch means, which weights a target of a
    # sparse micro-batch more; its loss differs wherever micro-batches carry unequal shares.
    counts = batch.counts.double()
    if len(set(counts.tolist())) > 1:
        means = []
        model = small.model
        for micro in batch.micro:
            packed = PackedAttention.of(micro.doc_ids, micro.bidirectional)
            nll = model(micro.inputs, packed=packed, targets=micro.targets)
            means.append(float(nll.detach()))
        mean_of_means = sum(m / c for m, c in zip(means, counts.tolist(), strict=True)) / 4
        assert abs(mean_of_means - loss_large) > 1e-4


def test_step_metrics_max_loss_and_grad_norm(tmp_path, data):  # noqa: F811
    """max_loss is the worst micro-batch's mean loss (not grad_accum times it)."""
    run = tmp_path / "run"
    over = {"train.steps": "4", "stability.every": "2", "train.grad_accum": "4"}
    Trainer(_config(data, run, **over), run).fit(show_progress=False)
    records = [json.loads(x) for x in (run / "stability.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["loss"] <= r["max_loss"] < 1.5 * r["loss"]
        assert r["grad_norm"] > 0


def test_non_finite_gradients_skip_the_update_on_the_device(tmp_path, data, monkeypatch):  # noqa: F811
    run = tmp_path / "run"
    trainer = Trainer(_config(data, run, **{"train.steps": "3", "train.log_every": "1"}), run)
    trainer.train_step()
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    moments = {k: v["exp_avg"].clone() for k, v in trainer.optimizer.state.items()}
    import herd.train.trainer as trainer_module

    real = trainer_module.clip_gradients
    monkeypatch.setattr(trainer_module, "clip_gradients", lambda m, c: real(m, c) * float("nan"))
    trainer.train_step()
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, weights[n]), n  # not a nan, and no weight decay either
    for k, v in trainer.optimizer.state.items():
        assert torch.equal(v["exp_avg"], moments[k]) and int(v["step"]) == 1
    trainer.verdicts.read()
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["event"]) for e in events] == [(2, "nonfinite_grad")]
    monkeypatch.undo()
    trainer.train_step()  # training goes on
    assert all(int(v["step"]) == 2 for v in trainer.optimizer.state.values())


def test_no_host_reads_between_log_steps(tmp_path, data, monkeypatch):  # noqa: F811
    """The training loop reads device values back (loss, gradient norm, the step's verdict) only
    on log, evaluation and checkpoint steps; on CPU nothing waits, so the reads are counted."""
    run = tmp_path / "run"
    over = {
        "train.steps": "10",
        "train.log_every": "5",
        "train.eval_every": "10",
        "train.checkpoint_every": "10",
        "stability.every": "1000",
        "data.objective": "mskuni",
        "train.grad_accum": "2",
    }
    trainer = Trainer(_config(data, run, **over), run)
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if f"{Path('herd', 'train')}" in caller:
                reads.append((trainer.step, _name, Path(caller).name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    trainer.fit(show_progress=False)
    monkeypatch.undo()
    assert reads and {step for step, *_ in reads} <= {5, 10}, reads


def test_blocks_are_compiled_one_by_one(tmp_path, data):  # noqa: F811
    """train.compile compiles each block in place (before FSDP2 would shard it), not the whole
    model; the compiled step trains like the eager one."""
    over = {"train.steps": "2", "train.log_every": "1"}
    eager = Trainer(_config(data, tmp_path / "e", **over), tmp_path / "e")
    compiled = Trainer(
        _config(data, tmp_path / "c", **over, **{"train.compile": "true"}), tmp_path / "c"
    )
    assert all(block._compiled_call_impl is not None for block in compiled.model.layers)
    assert compiled.model._compiled_call_impl is None
    assert [n for n, _ in compiled.model.named_parameters()] == [
        n for n, _ in eager.model.named_parameters()
    ]
    a, b = eager.fit(show_progress=False), compiled.fit(show_progress=False)
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
