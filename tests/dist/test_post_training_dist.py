"""`herd sft` and `herd dpo` under torchrun: two gloo processes on CPU give the losses of one
process at the same global batch; their checkpoints (sharded, or the adapters alone with [lora])
resume at any process count; DPO's reference table is the one process's and its rewards/* metrics
are logged."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import herd
from herd.checkpoint.io import save_herd_folder
from herd.posttrain.reference_tables import reference_files
from tests.dist.launch import torchrun
from tests.sums_tokenizer import sums_tokenizer

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)
LORA = {"lora.r": "4", "lora.target_modules": "q_proj,v_proj,down_proj"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A start checkpoint with a chat tokenizer, 48 conversations and 48 preference pairs."""
    root = tmp_path_factory.mktemp("posttrain")
    tok = sums_tokenizer(root)
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **CONFIG)
    save_herd_folder(
        config, herd.build_model(config, seed=0).state_dict(), root / "base", tok.files()
    )
    rng = random.Random(0)
    chats, pairs = [], []
    for _ in range(48):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        question, answer = f"What is {a} plus {b}?", f"{a + b}"
        chats.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
        pairs.append({"prompt": question, "chosen": answer, "rejected": f"{a + b + 1}"})
    for name, rows in (("chats.jsonl", chats), ("pairs.jsonl", pairs)):
        (root / name).write_text("\n".join(map(json.dumps, rows)) + "\n")
    return root


def _values(root: Path, data: str, out: Path, **extra: str) -> dict[str, str]:
    """Six steps, checkpoints after 3 and 6, validation with them."""
    values = {
        "model.checkpoint": root / "base",
        "data.path": root / data,
        "data.seq_len": 64,
        "data.batch_size": 4,
        "data.val_fraction": 0.3,
        "train.steps": 6,
        "train.log_every": 1,
        "train.eval_every": 3,
        "train.checkpoint_every": 3,
        "optim.lr": "3e-3",
        "optim.warmup_steps": 2,
        "train.out": out,
        **extra,
    }
    return {k: str(v) for k, v in values.items()}


def _flags(values: dict[str, str]) -> list[str]:
    return [token for k, v in values.items() for token in (f"--{k}", v)]


def _trainer(stage: str, values: dict[str, str] | None, run: Path, resume: bool = False):
    """The Trainer `herd sft|dpo` builds, in this process (one process, no process group)."""
    from herd.posttrain.dpo_run import DPO_DEFAULTS, dpo_data
    from herd.posttrain.sft import SFT_DEFAULTS, load_stage_config, sft_data
    from herd.train.config import load_run_config
    from herd.train.trainer import Trainer

    if resume:
        config = load_run_config(str(run / "config.toml"), {})
    else:
        config = load_stage_config(None, values, SFT_DEFAULTS if stage == "sft" else DPO_DEFAULTS)
    data = sft_data(config) if stage == "sft" else dpo_data(config, run)
    return Trainer(config, run, resume=resume, data=data)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> list[float]:
    return [r.get("loss", r.get("val_loss")) for r in _records(run)]


def _close(a: Path, b: Path, tol: float = 1e-5) -> None:
    """The same log lines (training and validation) with losses within `tol`."""
    x, y = _losses(a), _losses(b)
    assert len(x) == len(y) == 8  # six steps, validation after 3 and 6
    assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < tol


def _without_last(run: Path, dst: Path) -> Path:
    """The run as if killed after step 3's checkpoint."""
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "checkpoints" / "step-00000006")
    return dst


def _events(run: Path, name: str) -> list[dict]:
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == name]


def test_sft_two_processes_match_one_and_resume_in_one(setup, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _trainer("sft", _values(setup, "chats.jsonl", one), one).fit(show_progress=False)
    proc = torchrun(29525, "-m", "herd", "sft", *_flags(_values(setup, "chats.jsonl", two)))
    assert proc.stderr.count("sft data: 48 of 48 conversations kept") == 1  # rank 0 reports
    _close(one, two)
    step = two / "checkpoints" / "step-00000006"
    assert len(list((step / "train_state" / "model").glob("shard-*.safetensors"))) == 2
    assert [e["format"] for e in _events(two, "checkpoint")] == ["sharded", "sharded"]

    # killed after step 3, resumed in one process from the two processes' shards
    again = _without_last(two, tmp_path / "again")
    trainer = _trainer("sft", None, again, resume=True)
    assert trainer.step == 3
    trainer.fit(show_progress=False)
    _close(one, again)
    assert (again / "checkpoints" / "step-00000006" / "model.safetensors").is_file()


def test_lora_sft_saves_adapters_alone_at_any_process_count(setup, tmp_path):
    """[lora]: one process's adapter checkpoint resumes in two (`herd sft --resume`), which
    continue as the one process did and save the adapters alone, gathered from their shards."""
    one = tmp_path / "one"
    _trainer("sft", _values(setup, "chats.jsonl", one, **LORA), one).fit(show_progress=False)
    two = _without_last(one, tmp_path / "two")
    torchrun(29526, "-m", "herd", "sft", "--resume", str(two))
    _close(one, two)
    assert _events(two, "resume")[0]["checkpoint"].endswith("step-00000003")
    step = two / "checkpoints" / "step-00000006"
    files = {str(p.relative_to(step)) for p in step.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(f.startswith(("model", "train_state/model")) for f in files)
    a = load_file(one / "checkpoints" / "step-00000006" / "adapter_model.safetensors")
    b = load_file(step / "adapter_model.safetensors")
    assert set(a) == set(b) and len(a) == 2 * 3 * 2  # A and B, three targets, two layers
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    # the optimizer holds the adapters' moments only
    moments = torch.load(step / "train_state" / "optimizer.pt", weights_only=True)["state"]
    assert len(moments) == len(a) and all(k.endswith(("lora_A", "lora_B")) for k in moments)


# DPO: 15 of the 48 pairs are held out, so the last validation batch (3 of 4 pairs) leaves rows
# to both processes; test_every_process_validates_every_batch has one that does not.
DPO = {"data.val_fraction": "0.35", "optim.warmup_steps": "1"}


def test_dpo_two_processes_match_one(setup, tmp_path):
    """Two processes at batch 4 against one at batch 2 with two micro-batches: the same pairs per
    micro-batch, so the same DPO + NLL losses (the NLL term is a per-micro-batch token mean), the
    same reference table, and validation over the same pairs."""
    one, two = tmp_path / "one", tmp_path / "two"
    # a copy of the pairs per run: the reference tables live beside the data, and the second run
    # would read the first's instead of computing its own in two processes
    data = {}
    for run in (one, two):
        data[run] = tmp_path / f"data-{run.name}" / "pairs.jsonl"
        data[run].parent.mkdir()
        shutil.copy(setup / "pairs.jsonl", data[run])
    small = {**DPO, "data.batch_size": "2", "train.grad_accum": "2"}
    _trainer("dpo", _values(setup, str(data[one]), one, **small), one).fit(show_progress=False)
    proc = torchrun(29527, "-m", "herd", "dpo", *_flags(_values(setup, str(data[two]), two, **DPO)))
    assert proc.stderr.count("33 pairs to train on, 15 held out") == 1
    assert "dpo reference (train): computing" in proc.stderr
    _close(one, two)
    tables = [reference_files(run)["train"] for run in (one, two)]
    assert tables[0].parent == data[one].with_name("pairs.jsonl.herd-reference")
    for table in tables:
        with safe_open(table, "pt") as f:
            assert f.metadata()["complete"] == "true"
    ref = [load_file(table)["reference_logps"] for table in tables]
    assert ref[1].shape == (33, 2)
    torch.testing.assert_close(ref[0], ref[1], rtol=0, atol=1e-5)
    records = [r for r in _records(two) if "loss" in r]
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # the policy is the start
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"):
        assert all(name in r for r in records)
    val = [r for r in _records(two) if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 6] and "val_rewards/margins" in val[-1]
    for a, b in zip([r for r in _records(one) if "val_loss" in r], val, strict=True):
        assert a["val_rewards/accuracies"] == b["val_rewards/accuracies"]

    # killed after step 3, resumed in one process: the reference table is read, not recomputed
    again = _without_last(two, tmp_path / "again")
    reference = reference_files(again)["train"]
    stamp = reference.stat().st_mtime_ns
    trainer = _trainer("dpo", None, again, resume=True)
    assert trainer.step == 3
    trainer.fit(show_progress=False)
    assert reference.stat().st_mtime_ns == stamp
    _close(one, again)


class _CountingModel:
    """A model that counts its forward passes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls = model, 0

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def test_every_process_validates_every_batch(setup, tmp_path):
    """Under FSDP2 each forward all-gathers the weights, so every process must run as many as
    the others. 9 held-out pairs in batches of 4: the last batch's one pair belongs to process 0
    of 2 (rows 0-1), none to process 1 (rows 2-3); process 1 must still take part."""
    values = _values(setup, "pairs.jsonl", tmp_path / "run", **DPO)
    values["data.val_fraction"] = "0.25"
    trainer = _trainer("dpo", values, tmp_path / "run")
    assert len(trainer.objective.held_out.examples) == 9
    forwards = []
    for rows in (slice(0, 2), slice(2, 4)):  # process 0's rows, process 1's
        model = _CountingModel(trainer.model)
        trainer.objective.validate(model, None, rows, trainer.device, trainer._autocast)
        forwards.append(model.calls)
    assert forwards[0] == 3
    assert forwards[1] == forwards[0]
