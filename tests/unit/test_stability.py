"""Adam-instability statistics on tensors with known answers, the loss-spike detector, and the
trainer's responses: monitor records, skip, exact rewind-and-skip, lower_lr and eps (with resume)."""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch

from herd.train import stability_stats as stats
from herd.train.config import StabilityConfig
from herd.train.spikes import FIELDS, SpikeDetector
from herd.train.stability import Stability
from herd.train.trainer import Trainer
from tests.unit.test_trainer import _config, data  # noqa: F401 - shared prepared shards


def _stats(grads, previous=None, updates=None, deltas=None, weights=None, eps=1e-8, scale=10):
    """A group's statistics the way the monitor computes them: per-tensor sums, added up."""
    parts = [
        stats.tensor_sums(
            g,
            None if previous is None else previous[i],
            None if updates is None else updates[i],
            None if deltas is None else deltas[i],
            None if weights is None else weights[i],
            scale * eps,
        )
        for i, g in enumerate(grads)
    ]
    return stats.stats_from_sums(stats.add_sums(parts), eps, previous is not None, bool(deltas))


def _bimodality(u: torch.Tensor) -> float:
    return _stats([torch.ones_like(u)], updates=[u])["update_bimodality"]


def _sarle_direct(x: torch.Tensor) -> float:
    """The reference: central moments of the float64 sample."""
    c = x.double() - x.double().mean()
    var = c.pow(2).mean()
    return float(((c.pow(3).mean() / var.pow(1.5)) ** 2 + 1) / (c.pow(4).mean() / var.pow(2)))


def _cos_direct(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


def test_bimodality_coefficient_known_values():
    assert _bimodality(torch.tensor([-1.0, 1.0] * 500)) == pytest.approx(1.0)
    normal = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert _bimodality(normal) == pytest.approx(1 / 3, abs=0.01)
    uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    assert _bimodality(uniform) == pytest.approx(5 / 9, abs=0.01)
    assert _bimodality(torch.full((100,), 0.7)) is None  # no spread, no shape


def test_normalized_update_cosines_and_histogram():
    m, v = torch.tensor([0.1, -0.2]), torch.tensor([0.04, 0.01])
    state = {"step": torch.tensor(2.0), "exp_avg": m, "exp_avg_sq": v}
    u = stats.normalized_update(state, 0.9, 0.95, 1e-8)
    expected = (m / (1 - 0.9**2)) / ((v / (1 - 0.95**2)).sqrt() + 1e-8)
    torch.testing.assert_close(u, expected)
    assert stats.normalized_update({}, 0.9, 0.95, 1e-8) is None
    g = torch.tensor([1.0, 0.0])
    out = _stats([g], previous=[-2 * g], deltas=[-0.5 * g], weights=[torch.tensor([3.0, 4.0])])
    assert out["grad_time_corr"] == -1.0 and out["update_grad_cos"] == 1.0
    assert out["update_weight_ratio"] == pytest.approx(0.5 / 5)
    hist = stats.update_histogram([torch.tensor([-5.0, 0.01, 0.02, 5.0])])
    assert sum(hist) == pytest.approx(1.0) and hist[0] == hist[-1] == 0.25


def test_group_stats_on_eps_scale_gradients():
    eps = 1e-8
    g = torch.full((1000,), 2e-8)
    g[:100] = 1.0
    out = _stats([g], previous=[g.clone()], eps=eps, scale=10)
    assert out["frac_below_eps"] == pytest.approx(0.9)
    assert out["grad_time_corr"] == pytest.approx(1.0)
    assert out["grad_rms_over_eps"] == pytest.approx(out["grad_rms"] / eps)


def test_group_stats_from_per_tensor_sums_equal_the_direct_computation():
    # The monitor adds per-tensor power sums; the reference concatenates the group in float64.
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (16, 48)]
    g, prev, d, w = ([torch.randn(s, generator=gen) * 1e-3 for s in shapes] for _ in range(4))
    u = [
        torch.where(torch.rand(s, generator=gen) < 0.5, -0.9, 0.9)
        + 0.1 * torch.randn(s, generator=gen)
        for s in shapes
    ]
    out = _stats(g, prev, u, d, w, eps=1e-8, scale=1e5)

    def cat(xs):
        return torch.cat([x.double().flatten() for x in xs])

    assert out["update_bimodality"] == pytest.approx(_sarle_direct(cat(u)), rel=1e-6)
    assert out["update_abs_mean"] == pytest.approx(float(cat(u).abs().mean()), rel=1e-6)
    assert out["grad_time_corr"] == pytest.approx(
        _cos_direct(cat(g), cat(prev)), rel=1e-5, abs=1e-7
    )
    assert out["update_grad_cos"] == pytest.approx(_cos_direct(cat(d), -cat(g)), rel=1e-5, abs=1e-7)
    assert out["update_weight_ratio"] == pytest.approx(
        float(cat(d).norm() / cat(w).norm()), rel=1e-6
    )
    assert out["grad_rms"] == pytest.approx(float(cat(g).pow(2).mean().sqrt()), rel=1e-6)
    assert out["frac_below_eps"] == pytest.approx(float((cat(g).abs() < 1e-3).double().mean()))
    assert out["update_bimodality"] > 5 / 9  # the +-0.9 sample is bimodal


def _observe(det: SpikeDetector, loss: float, norm: float = 1.0) -> dict:
    loss_t = torch.tensor(loss, dtype=torch.float64)
    skip, row = det.observe(loss_t, loss_t, torch.tensor(norm))
    record = dict(zip(FIELDS, row.tolist(), strict=True))
    assert float(skip) == record["skipped"]
    return record


def test_detector_fires_on_a_spike_not_on_noise():
    # The reference: Python's statistics module over the same trailing window.
    det = SpikeDetector(StabilityConfig(window=20, threshold=6.0), False, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    seen = []
    for x in (2.0 + 0.05 * torch.randn(40, generator=gen, dtype=torch.float64)).tolist():
        record = _observe(det, x)
        assert not record["spike"] and not record["skipped"]
        if len(seen) >= 20:
            median = statistics.median(seen[-20:])
            mad = statistics.median(abs(v - median) for v in seen[-20:]) * 1.4826
            assert record["median"] == pytest.approx(median, abs=1e-12)
            assert record["mad"] == pytest.approx(mad, abs=1e-12)
            assert record["z"] == pytest.approx((x - median) / mad)
        seen.append(x)
    spike = _observe(det, 3.0)
    assert spike["spike"] and spike["z"] > 6 and not spike["skipped"]  # `log` keeps the update
    assert not _observe(det, 2.08)["spike"]
    # A non-finite gradient is skipped, and its loss does not enter the window.
    before = det.state_dict()["losses"]
    record = _observe(det, 2.0, norm=float("inf"))
    assert record["skipped"] and record["nonfinite"] and not record["spike"]
    assert det.state_dict()["losses"] == before


def test_skips_are_bounded_and_the_window_follows_a_new_level():
    """A loss that rises for good is not skipped for ever: after max_skips spiking steps the
    updates apply again and the window takes in the new level until it no longer spikes."""
    config = StabilityConfig(window=10, max_skips=3)
    det = SpikeDetector(config, True, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    noise = (0.01 * torch.randn(60, generator=gen, dtype=torch.float64)).tolist()
    for x in noise[:20]:
        assert not _observe(det, 2.0 + x)["skipped"]
    after = [_observe(det, 5.0 + x) for x in noise[20:]]
    assert [r["skipped"] for r in after[:4]] == [True, True, True, False]
    assert not any(r["skipped"] for r in after[3:])
    assert after[3]["limited"] and not after[-1]["spike"]  # the window has caught up
    # The state (window, run of spikes) comes back from a checkpoint exactly.
    twin = SpikeDetector(config, True, torch.device("cpu"))
    twin.load_state_dict(det.state_dict())
    for x in (5.0, 9.0, 5.01):
        assert _observe(twin, x) == _observe(det, x)


def _record(**tensors):
    quiet = {"update_bimodality": 0.1, "update_abs_mean": 0.02, "grad_time_corr": 0.5}
    return {"step": 7, "groups": {"layers.0": quiet}, "tensors": tensors}


def test_warning_needs_a_bimodal_update_near_one_and_decorrelated_gradients():
    from herd.train.stability_report import bimodal_onset

    monitor = Stability(StabilityConfig())
    near_one = {"update_bimodality": 0.7, "update_abs_mean": 0.6, "grad_time_corr": -0.1}
    record = _record(**{"layers.0.attn.wq": near_one})
    assert monitor.warnings(record, window_full=False) == []
    assert monitor.warnings(record, window_full=True) == ["layers.0.attn.wq"]
    tiny = {**near_one, "update_abs_mean": 0.03}  # two humps of tiny updates: not the theory's
    correlated = {**near_one, "grad_time_corr": 0.6}
    flat = {**near_one, "update_bimodality": 0.4}
    for calm in (tiny, correlated, flat):
        assert monitor.warnings(_record(**{"layers.0.attn.wq": calm}), True) == []

    # The onset before a spike: the first record of the unbroken bimodal run ending at the spike.
    records = [
        {**_record(**{"layers.1.attn.wk": near_one}), "step": 2},
        {**_record(**{"layers.1.attn.wk": tiny}), "step": 4},
        {**_record(**{"layers.1.attn.wk": near_one}), "step": 6},
        {**_record(**{"layers.0.attn.wq": near_one}), "step": 8},
        {**_record(**{"layers.0.attn.wq": tiny}), "step": 10},
    ]
    assert bimodal_onset(records, 9)[:2] == (6, "layers.1.attn.wk")
    assert bimodal_onset(records, 5) is None and bimodal_onset(records, 11) is None
    assert stats.layer_of("layers.3.attn.wk") == "layers.3" and stats.layer_of("output") == "head"


def _losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _force_spike(monkeypatch, at_step):
    """Make the detector fire once, at the step whose loss is the `at_step`-th scored."""
    seen = {"n": 0}
    original = SpikeDetector.score

    def score(self, loss):
        seen["n"] += 1
        spike, z, median, mad = original(self, loss)
        if seen["n"] == at_step:
            return torch.ones_like(spike), torch.full_like(z, 99.0), loss, torch.zeros_like(mad)
        return spike, z, median, mad

    monkeypatch.setattr(SpikeDetector, "score", score)


def test_split_undone_keeps_the_path_the_weights_took():
    from herd.train.runlog import split_undone

    # steps 1-6; a rewind to step 3 replays 4-5; a second, to step 2, replays 3-8
    steps = [1, 2, 3, 4, 5, 6, 4, 5, 3, 4, 5, 6, 7, 8]
    kept, undone = split_undone([{"step": s, "i": i} for i, s in enumerate(steps)])
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r["i"] for r in kept] == [0, 1, 8, 9, 10, 11, 12, 13]
    assert [r["i"] for r in undone] == [2, 3, 4, 5, 6, 7]
    assert split_undone([]) == ([], [])


def test_monitor_records_and_rewind_is_exact(tmp_path, data, monkeypatch):  # noqa: F811
    over = {
        "train.steps": "16",
        "train.log_every": "1",
        "train.checkpoint_every": "4",
        "stability.every": "4",
        "stability.response": "rewind",
        "stability.skip_batches": "3",
    }
    run = tmp_path / "a"
    _force_spike(monkeypatch, 11)  # the loss of step 11 "spikes": rewind to step 8, skip 3
    Trainer(_config(data, run, **over), run).fit(show_progress=False)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    [rewind] = [e for e in events if e["event"] == "rewind"]
    assert rewind["to_step"] == 8 and rewind["skipped_batches"] == 3
    assert rewind["cursor_to"]["index"] - rewind["cursor_from"]["index"] == 3 * 4  # 3 batches of 4
    assert [e["step"] for e in events if e["event"] == "update_skipped"] == [11]
    records = [json.loads(x) for x in (run / "stability.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records} >= {4, 8, 12, 16}
    groups = records[-1]["groups"]
    assert records[-1]["grad_norm"] > 0 and records[-1]["max_loss"] >= records[-1]["loss"]
    assert set(groups) == {"embed", "layers.0", "layers.1", "head"}
    assert groups["layers.0"]["grad_time_corr"] is not None
    assert 0 < groups["layers.0"]["update_weight_ratio"] < 1
    assert len(records[-1]["update_histogram"]) == stats.HIST_BINS
    tensors = records[-1]["tensors"]  # every weight matrix on its own, norms left to the layer
    assert {"embed", "layers.0.attn.wq", "layers.1.ffn.w2"} <= set(tensors)
    assert not any("norm" in k for k in tensors)
    assert tensors["layers.0.attn.wq"]["grad_time_corr"] is not None

    # metrics.jsonl keeps the steps the rewind undid; plots and the report tell them apart
    from herd.train.runlog import read_jsonl, split_undone

    kept, undone = split_undone([r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r])
    assert [r["step"] for r in kept] == list(range(1, 17))
    assert [r["step"] for r in undone] == [9, 10]  # 11 spiked: no update, no metrics line

    from herd.train.stability_report import report

    png, text = report(run)
    assert png.stat().st_size > 20_000
    assert "1 loss spike(s)" in text and "skipped 3 batches" in text

    # A fresh run from the step-8 checkpoint that skips the same 3 batches is the same run.
    monkeypatch.undo()
    fresh = tmp_path / "b"
    fresh.mkdir()
    shutil.copytree(run / "checkpoints" / "step-00000008", fresh / "checkpoints" / "step-00000008")
    trainer = Trainer(
        _config(data, fresh, **{**over, "stability.response": "log"}), fresh, resume=True
    )
    assert trainer.step == 8
    trainer.loader.skip(3)
    trainer.fit(show_progress=False)
    after_rewind = _losses(run)[-8:]  # steps 9..16 of the rewound run
    assert after_rewind == _losses(fresh)[-8:]


def test_skip_lower_lr_and_eps_responses(tmp_path, data, monkeypatch):  # noqa: F811
    over = {
        "train.steps": "10",
        "train.log_every": "1",
        "train.checkpoint_every": "5",
        "stability.response": "eps",
        "stability.eps_factor": "100",
    }
    _force_spike(monkeypatch, 3)
    run = tmp_path / "eps"
    trainer = Trainer(_config(data, run, **over), run)
    trainer.fit(show_progress=False)
    assert trainer.optimizer.param_groups[0]["eps"] == pytest.approx(1e-8 * 100)
    resumed = Trainer(_config(data, run, **{**over, "train.steps": "12"}), run, resume=True)
    assert resumed.optimizer.param_groups[0]["eps"] == pytest.approx(1e-6)  # kept on resume

    monkeypatch.undo()
    _force_spike(monkeypatch, 3)
    run = tmp_path / "lr"
    over_lr = {
        **over,
        "stability.response": "lower_lr",
        "stability.lr_factor": "0.1",
        "stability.lr_steps": "4",
    }
    lr_trainer = Trainer(_config(data, run, **over_lr), run)
    lrs = []
    for _ in range(8):
        lr_trainer.train_step()
        lrs.append(lr_trainer.optimizer.param_groups[0]["lr"])
    plain = Trainer(
        _config(data, tmp_path / "p", **{**over_lr, "stability.response": "log"}), tmp_path / "p"
    )
    base = []
    for _ in range(8):
        plain.train_step()
        base.append(plain.optimizer.param_groups[0]["lr"])
    assert lrs[3:6] == pytest.approx([x * 0.1 for x in base[3:6]]) and lrs[7] == base[7]


def test_a_loss_that_rises_for_good_does_not_freeze_training(tmp_path, data, monkeypatch, capsys):  # noqa: F811
    """`skip` skips at most max_skips spiking steps in a row, then says so (an event and a line
    on stderr), applies the updates and lets the detector's window follow the new level."""
    import herd.train.trainer as trainer_module

    real = trainer_module.accumulate_gradients
    calls = {"n": 0}

    def shifted(*args, **kwargs):  # from step 12 on, every loss reads 10 nats higher
        calls["n"] += 1
        loss, worst = real(*args, **kwargs)
        return (loss + 10, worst + 10) if calls["n"] >= 12 else (loss, worst)

    monkeypatch.setattr(trainer_module, "accumulate_gradients", shifted)
    over = {
        "train.steps": "24",
        "train.log_every": "6",
        "stability.window": "5",
        "stability.response": "skip",
        "stability.max_skips": "3",
    }
    run = tmp_path / "run"
    trainer = Trainer(_config(data, run, **over), run)
    trainer.fit(show_progress=False)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]

    def steps(name):
        return [e["step"] for e in events if e["event"] == name]

    assert steps("update_skipped") == [12, 13, 14]
    assert steps("skip_limit") == [15]
    assert steps("loss_spike") == [12, 13, 14, 15, 16, 17]  # the window has caught up at 18
    assert all(int(s["step"]) == 24 - 3 for s in trainer.optimizer.state.values())
    assert "warning: step 15: 3 consecutive loss spikes skipped" in capsys.readouterr().err


@pytest.mark.parametrize("read_on", ["log", "monitor"])
def test_rewind_without_a_checkpoint_skips_the_spike(tmp_path, data, monkeypatch, read_on):  # noqa: F811
    """A spike before the first checkpoint cannot be rewound: the spike's update stays skipped
    and training goes on as under `skip`, whether the verdicts are read on a log step (after
    the spike) or on a monitor step."""
    over = {
        "train.steps": "8",
        "train.log_every": "4" if read_on == "log" else "8",
        "train.checkpoint_every": "100",
        "stability.every": "4" if read_on == "monitor" else "1000",
    }
    runs = {}
    for response in ("rewind", "skip"):
        monkeypatch.undo()
        _force_spike(monkeypatch, 2)
        run = tmp_path / response
        trainer = Trainer(_config(data, run, **{**over, "stability.response": response}), run)
        trainer.fit(show_progress=False)
        assert all(int(s["step"]) == 7 for s in trainer.optimizer.state.values())
        runs[response] = run
    events = [json.loads(x) for x in (runs["rewind"] / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["event"]) for e in events if e["event"] != "checkpoint"] == [
        (2, "loss_spike"),
        (2, "update_skipped"),
        (2, "rewind_failed"),
    ]
    assert _losses(runs["rewind"]) == _losses(runs["skip"])
