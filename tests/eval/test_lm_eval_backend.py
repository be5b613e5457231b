"""herd/eval/lm_eval_backend.py: how the "herd" lm-eval model takes its arguments (model args
merged with lm-eval's own options, unknown names refused, absent CUDA devices, batch_size auto)
and how `herd lm-eval` reports a bad one. Scores against lm-eval's HF model are in
test_lm_eval_parity.py."""

from __future__ import annotations

import json
import logging
import sys

import lm_eval.utils
import pytest
import torch

import herd.eval.lm_eval_backend as backend
from herd.cli import main
from herd.errors import HerdError
from tests.eval.fixtures import belebele_rows, tiny_checkpoint

# what lm-eval's simple_evaluate passes next to the model args when its CLI runs with defaults
CLI_DEFAULTS = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("backend"))


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def herd_log(caplog):
    """Records of the bridge's logger (a child of "lm_eval", which lm-eval's CLI stops from
    propagating to the root logger where caplog listens)."""
    logger = logging.getLogger("lm_eval.models.herd")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lm_eval.models.herd")
    yield caplog
    logger.removeHandler(caplog.handler)


# --- model args and lm-eval's options -----------------------------------------------------------


def test_model_args_device_wins_over_lm_eval_default(checkpoint):
    """`--model_args checkpoint=X,device=cpu` with lm-eval's own device="cuda:0" (its default):
    one device, the model arg's, instead of TypeError: multiple values for 'device'."""
    lm = backend.HerdLM.create_from_arg_string(f"checkpoint={checkpoint},device=cpu", CLI_DEFAULTS)
    assert lm.model.embed.weight.device.type == "cpu"
    args = {"checkpoint": str(checkpoint), "device": "cpu", "batch_size": 4}
    lm = backend.HerdLM.create_from_arg_obj(args, {**CLI_DEFAULTS, "max_batch_size": 32})
    assert lm.model.embed.weight.device.type == "cpu"
    assert lm.batch_size == 4  # the model arg, not lm-eval's default 1
    assert lm.max_batch_size == 32  # lm-eval's option where the model args give none


@pytest.mark.parametrize(
    ("arg", "closest"),
    [
        ("chekpoint", "checkpoint"),
        ("pretrained", "checkpoint"),
        ("max_batchsize", "max_batch_size"),
    ],
)
def test_unknown_model_arg_is_refused_naming_the_closest(checkpoint, arg, closest):
    with pytest.raises(HerdError, match=f"'{arg}' .*did you mean '{closest}'") as e:
        backend.HerdLM.create_from_arg_string(f"checkpoint={checkpoint},{arg}=1", CLI_DEFAULTS)
    assert "\n" not in str(e.value)


def test_trust_remote_code_is_accepted(checkpoint):
    """lm-eval's --trust_remote_code adds trust_remote_code=True to the model args itself."""
    args = {"checkpoint": str(checkpoint), "device": "cpu", "trust_remote_code": True}
    backend.HerdLM.create_from_arg_obj(args, CLI_DEFAULTS)


def test_missing_checkpoint_is_a_herd_error():
    with pytest.raises(HerdError, match="checkpoint=PATH"):
        backend.HerdLM.create_from_arg_string("device=cpu", CLI_DEFAULTS)


# --- device -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda:0", "cuda", "cuda:3"])
def test_absent_cuda_falls_back_to_cpu_and_says_so(checkpoint, no_cuda, herd_log, device):
    lm = backend.HerdLM.create_from_arg_obj(
        {"checkpoint": str(checkpoint)}, {**CLI_DEFAULTS, "device": device}
    )
    assert lm.model.embed.weight.device.type == "cpu"
    assert any(f"device '{device}' is not available" in r.message for r in herd_log.records)


def test_not_a_device_is_a_herd_error(checkpoint):
    with pytest.raises(HerdError, match="'gpu0': not a torch device"):
        backend.HerdLM(checkpoint=str(checkpoint), device="gpu0")


# --- herd lm-eval -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """A local lm-eval multiple-choice task over the fixture questions (no download)."""
    root = tmp_path_factory.mktemp("tasks")
    data = root / "data.jsonl"
    rows = belebele_rows("eng_Latn")
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    (root / "herd_check.yaml").write_text(
        "task: herd_check\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "P: {{flores_passage}}\\nQ: {{question}}\\nAnswer:"\n'
        'doc_to_choice: ["A", "B", "C", "D"]\n'
        "doc_to_target: \"{{['1', '2', '3', '4'].index(correct_answer_num)}}\"\n"
        "metric_list:\n  - metric: acc\n",
        "utf-8",
    )
    return root


def _herd_lm_eval(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["herd"])  # run_lm_eval replaces it; lm-eval edits it
    # lm-eval's CLI gives its logger a handler once per process, on the sys.stderr of the time
    # (a closed capture after the first test): a fresh one per run, undone afterwards
    lm_eval_logger = logging.getLogger("lm_eval")
    monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", False)
    monkeypatch.setattr(lm_eval_logger, "handlers", [])
    monkeypatch.setattr(lm_eval_logger, "propagate", lm_eval_logger.propagate)
    return main(["lm-eval", "--model", "herd", "--tasks", "herd_check", *args])


def test_cli_runs_with_model_args_device_and_lm_eval_defaults(
    checkpoint, task_folder, monkeypatch, capsys
):
    """lm-eval's CLI passes device cuda:0 and batch_size 1 itself; with device=cpu and
    batch_size=auto in the model args the run completes (no CUDA needed)."""
    code = _herd_lm_eval(
        monkeypatch,
        "--model_args",
        f"checkpoint={checkpoint},device=cpu,batch_size=auto",
        "--include_path",
        str(task_folder),
    )
    assert code == 0
    assert "herd_check" in capsys.readouterr().out


def test_cli_reports_an_unknown_model_arg_in_one_line(checkpoint, task_folder, monkeypatch, capsys):
    code = _herd_lm_eval(
        monkeypatch,
        "--model_args",
        f"pretrained={checkpoint}",
        "--include_path",
        str(task_folder),
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("herd lm-eval: error: model_args: unknown argument 'pretrained'")
    assert "did you mean 'checkpoint'" in last
