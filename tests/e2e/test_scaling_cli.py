"""`herd scaling fit | plan | sweep` end to end: CSV and run-folder fits with plots, a plan that
loads as a run config, a tiny real IsoFLOP sweep that resumes, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from herd.scaling.chinchilla import ChinchillaLaw, published
from herd.train.config import load_run_config
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.unit.test_trainer import data  # noqa: F401 - prepared shards with a 300-token BPE


def _csv(path, rows):
    path.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{x}\n" for n, d, x in rows))
    return path


def test_fit_csv_and_plan(tmp_path):
    law = published()
    rng = np.random.default_rng(0)
    rows = [
        (n, d, float(law.loss(n, d) * np.exp(rng.normal(0, 0.003))))
        for n in np.geomspace(1e8, 1e10, 6)
        for d in np.geomspace(2e9, 2e11, 5)
    ]
    out = tmp_path / "fit"
    proc = herd_cli_inprocess(
        "scaling", "fit", _csv(tmp_path / "p.csv", rows), "--out", out, "--bootstrap", "5"
    )
    assert "N_opt" in proc.stdout
    record = json.loads((out / "fit.json").read_text())
    assert abs(record["fit"]["alpha"] / 0.34 - 1) < 0.1
    assert (out / "frontier.png").stat().st_size > 10_000 and (out / "fit.png").is_file()
    plan = herd_cli_inprocess(
        "scaling",
        "plan",
        "--flops",
        "1e21",
        "--law",
        out / "fit.json",
        "--out",
        tmp_path / "plan.toml",
    )
    assert "tokens per parameter" in plan.stdout
    run = load_run_config(str(tmp_path / "plan.toml"))
    assert run.model_config().num_params() > 5e8 and run.train.steps > 1
    published_plan = herd_cli_inprocess("scaling", "plan", "--flops", "1e24")
    assert "97.7 tokens per parameter" in published_plan.stdout


def test_bad_input(tmp_path):
    one_line_error(
        herd_cli_inprocess(
            "scaling", "fit", _csv(tmp_path / "few.csv", [(1e8, 1e9, 3.0)] * 5), check=False
        ),
        "fewer than the 6 needed",
    )
    bad = tmp_path / "nan.csv"
    bad.write_text("params,tokens,loss\n1e8,1e9,3.0\n1e9,1e10,nan\n")
    one_line_error(herd_cli_inprocess("scaling", "fit", bad, check=False), "nan.csv:3: loss is NaN")
    neg = _csv(tmp_path / "neg.csv", [(1e8, 1e9, 3.0)] * 6 + [(-1, 1e9, 3.0)])
    one_line_error(
        herd_cli_inprocess("scaling", "fit", neg, check=False),
        "params: every value must be positive",
    )
    cols = tmp_path / "cols.csv"
    cols.write_text("params,loss\n1,2\n")
    one_line_error(herd_cli_inprocess("scaling", "fit", cols, check=False), "no 'tokens' column")
    # a real `python -m herd` process: its own exit code 2 and one stderr line
    one_line_error(herd_cli("scaling", "plan", "--flops", "-5", check=False), "--flops -5")


def test_tiny_sweep_end_to_end_and_resumable(tmp_path, data):  # noqa: F811
    out = tmp_path / "sweep"
    args = [
        "scaling",
        "sweep",
        "--data",
        data,
        "--flops",
        "2e10,6e10",
        "--sizes",
        "6e4,1.5e5,4e5",
        "--out",
        out,
        "--seq-len",
        "32",
    ]
    herd_cli(*args)
    points = json.loads((out / "points.json").read_text())
    assert len(points) == 6 and all(np.isfinite(p["loss"]) for p in points)
    fits = json.loads((out / "fit.json").read_text())
    law = ChinchillaLaw(**fits["chinchilla"]["fit"])
    small, large = (law.loss(*law.optimal(c)) for c in (2e10, 6e10))
    assert large < small  # more compute, lower predicted loss
    assert (out / "frontier.png").is_file()
    again = herd_cli(*args)
    assert again.stdout.count("finished, skipped") == 6
    refit = herd_cli("scaling", "fit", out, "--law", "isoflop", check=False)
    assert refit.returncode in (0, 2)  # 3 sizes per budget may not bracket the optimum

    # downstream points straight from `herd eval --out` of the runs' checkpoints
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        "".join(
            json.dumps({"context": f"Q{i}: a b c", "choices": ["a", "b", "c"], "answer": i % 3})
            + "\n"
            for i in range(6)
        )
    )
    run_dirs = sorted((out / "runs").iterdir())[:2]
    for k, run_dir in enumerate(run_dirs):
        checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
        herd_cli(
            "eval",
            checkpoint,
            "--task",
            "mc",
            "--data",
            mc,
            "--out",
            tmp_path / f"e{k}.json",
            "--device",
            "cpu",
        )
    from herd.scaling.runs import read_points

    evals = read_points([str(tmp_path / "e0.json"), str(tmp_path / "e1.json")])
    by_run = {p["run"]: p for p in points}
    for point, run_dir in zip(evals, run_dirs, strict=True):
        assert point["flops"] == pytest.approx(by_run[str(run_dir)]["flops"])
        record = json.loads(Path(point["eval"]).read_text())
        assert point["accuracy"] == sum(r["correct"] for r in record["results"]) / 6
        assert point["nll"] > 0
