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
from lm_eval.api.instance import Instance

import herd
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


def _logprobs(results: list[tuple[float, bool]]) -> list[float]:
    return [logprob for logprob, _ in results]


def _requests(contexts: list[str]) -> list[Instance]:
    return [
        Instance("loglikelihood", {}, (c, x), i)
        for i, (c, x) in enumerate((c, x) for c in contexts for x in (" A", " B", " C", " D"))
    ]


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


# --- batch_size auto ----------------------------------------------------------------------------


def test_batch_size_is_an_integer_auto_or_auto_n(checkpoint):
    for bad in ("eight", "0", "auto:0", "auto:x"):
        with pytest.raises(HerdError, match="batch_size"):
            backend.HerdLM(checkpoint=str(checkpoint), device="cpu", batch_size=bad)
    with pytest.raises(HerdError, match="max_batch_size"):
        backend.HerdLM(checkpoint=str(checkpoint), device="cpu", max_batch_size="auto")


def test_auto_on_cpu_bounds_tokens_per_batch_and_max_batch_size(checkpoint):
    contexts = [
        f"P: {r['flores_passage']}\nQ: {r['question']}\nAnswer:" for r in belebele_rows("eng_Latn")
    ]
    fixed = backend.HerdLM(checkpoint=str(checkpoint), device="cpu", batch_size=1)
    expected = _logprobs(fixed.loglikelihood(_requests(contexts)))
    longest = max(len(fixed.tokenizer.encode(c, bos=True)) for c in contexts)

    auto = backend.HerdLM(checkpoint=str(checkpoint), device="cpu", batch_size="auto")
    assert _logprobs(auto.loglikelihood(_requests(contexts))) == pytest.approx(expected, abs=1e-5)
    assert auto.batch_sizes == {0: min(64, backend.CPU_TOKENS_PER_BATCH // longest)}

    capped = backend.HerdLM(
        checkpoint=str(checkpoint), device="cpu", batch_size="auto", max_batch_size=3
    )
    assert _logprobs(capped.loglikelihood(_requests(contexts))) == pytest.approx(expected, abs=1e-5)
    assert capped.batch_sizes == {0: 3}


def test_auto_n_detects_again_as_contexts_get_shorter(checkpoint, monkeypatch):
    seen = []

    def largest(model, length, ceiling):
        seen.append(length)
        return 2

    monkeypatch.setattr(backend, "largest_batch_size", largest)
    lm = backend.HerdLM(checkpoint=str(checkpoint), device="cpu", batch_size="auto:3")
    contexts = ["Q: " + "le train part " * n + "?\nAnswer:" for n in (1, 2, 3, 4, 5, 6)]
    lm.loglikelihood(_requests(contexts))
    assert lm.batch_sizes == {0: 2, 1: 2, 2: 2}
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 3  # longest of each part


class _OutOfMemoryAbove(torch.nn.Module):
    """A model that runs out of memory (as CUDA reports it) for batches above `limit`."""

    def __init__(self, model, limit: int):
        super().__init__()
        self.model, self.limit, self.embed, self.tried = model, limit, model.embed, []

    def forward(self, tokens, **kwargs):
        self.tried.append(tokens.shape[0])
        if tokens.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(tokens, **kwargs)


def test_probe_finds_the_largest_batch_that_fits_as_hflm_does(checkpoint):
    """accelerate's search as lm-eval's HF model runs it: start at max_batch_size, 10% less after
    each out-of-memory error (64, 57, 51, 45, 40, 36, 32, 28, 25, 22, 19)."""
    model = herd.load(checkpoint)
    oom = _OutOfMemoryAbove(model, limit=20)
    assert backend.probe_batch_size(oom, 40, 64) == 19
    assert sorted(set(oom.tried), reverse=True) == [64, 57, 51, 45, 40, 36, 32, 28, 25, 22, 19]
    assert backend.probe_batch_size(_OutOfMemoryAbove(model, limit=100), 40, 8) == 8
    assert backend.probe_batch_size(_OutOfMemoryAbove(model, limit=0), 40, 8) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_cuda_probes_and_scores_as_a_fixed_batch(checkpoint):
    contexts = [f"P: {r['flores_passage']}\nAnswer:" for r in belebele_rows("fra_Latn")]
    fixed = backend.HerdLM(checkpoint=str(checkpoint), device="cuda", batch_size=1)
    auto = backend.HerdLM(
        checkpoint=str(checkpoint), device="cuda", batch_size="auto", max_batch_size=16
    )
    expected = _logprobs(fixed.loglikelihood(_requests(contexts)))
    assert _logprobs(auto.loglikelihood(_requests(contexts))) == pytest.approx(expected, abs=1e-4)
    assert auto.batch_sizes == {0: 16}


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
