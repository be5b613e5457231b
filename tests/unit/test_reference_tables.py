"""herd/posttrain/reference_tables.py: where the tables live, their fingerprint, reuse, resume."""

from __future__ import annotations

import json
import os
import random
from collections import namedtuple

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import herd
from herd.checkpoint.io import save_herd_folder
from herd.errors import HerdError
from herd.posttrain.dpo import PreferenceBatch, preference_logps
from herd.posttrain.dpo_run import DPOObjective
from herd.posttrain.preference_batches import PreferenceBatches, pair_batch
from herd.posttrain.reference_tables import (
    REFERENCE_RECORD,
    load_reference_logps,
    reference_files,
    reference_fingerprint,
    reference_folder,
    reference_pass,
    start_stamp,
)

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, ffn_dim=64, max_seq_len=64
)
Pair = namedtuple("Pair", "prompt_ids chosen_ids chosen_mask rejected_ids rejected_mask")


def _pairs(n: int, seed: int = 0) -> list[Pair]:
    """Pairs of assorted lengths (prompt + longer response <= 40 tokens)."""
    rng = random.Random(seed)

    def response(length):
        return [rng.randrange(50) for _ in range(length)], [0] + [1] * (length - 2) + [0]

    out = []
    for _ in range(n):
        prompt = [rng.randrange(50) for _ in range(rng.randint(2, 10))]
        out.append(Pair(prompt, *response(rng.randint(3, 30)), *response(rng.randint(3, 30))))
    return out


class _Counting(torch.nn.Module):
    """The model, counting forwards; raises KeyboardInterrupt at forward `stop_at` (a kill)."""

    def __init__(self, model, stop_at=None):
        super().__init__()
        self.model, self.calls, self.stop_at = model, 0, stop_at
        self.config = model.config

    def forward(self, tokens, **kw):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.model(tokens, **kw)


@pytest.fixture
def world(tmp_path):
    """A start checkpoint, a data file (its contents stand for the pairs) and a model."""
    model = herd.build_model(CONFIG, seed=0)
    start = tmp_path / "start"
    save_herd_folder(CONFIG, model.state_dict(), start)
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    return start, data, model


def _objective(start, data, run_dir, pairs, held_out=None, batch_size=2):
    folder, _ = reference_folder(str(data), run_dir)
    batches = PreferenceBatches(pairs, batch_size)
    val = PreferenceBatches(held_out, 1) if held_out else None
    return DPOObjective(batches, val, 0.1, 0.0, folder, run_dir, start, 40)


def _prepare(objective, model):
    objective.prepare(model, 0, torch.device("cpu"))
    return objective


def _per_batch(model, pairs):
    """The reference log-probs a batch of 2 pairs at a time (the pass before the change)."""
    rows = []
    with torch.no_grad():
        for start in range(0, len(pairs), 2):
            b = pair_batch(pairs, range(start, min(start + 2, len(pairs))))
            out = preference_logps(model, PreferenceBatch(*b.tensors()[:4]))
            rows.append(torch.stack([out.chosen, out.rejected], dim=1))
    return torch.cat(rows)


def test_reference_folder_beside_the_data_or_the_run_folder(tmp_path):
    run = tmp_path / "run"
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    assert reference_folder(str(data), run) == (
        tmp_path / "pairs.jsonl.herd-reference",
        "beside the data",
    )
    assert (tmp_path / "pairs.jsonl.herd-reference").is_dir()
    shards = tmp_path / "shards"
    shards.mkdir()
    assert reference_folder(str(shards) + "/", run)[0] == tmp_path / "shards.herd-reference"
    # a Hugging Face dataset name: nothing local to write beside (no network needed to tell)
    folder, why = reference_folder("someone/preference-pairs", run)
    assert folder == run and "not a local file or folder" in why
    # a folder that cannot be written (here: the name is taken by a file)
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    (tmp_path / "other.jsonl.herd-reference").write_text("in the way")
    folder, why = reference_folder(str(other), run)
    assert folder == run and "cannot be written" in why


def test_tables_are_stored_beside_the_data_and_reused(world, tmp_path, capsys):
    start, data, model = world
    pairs, held_out = _pairs(12), _pairs(3, seed=1)
    counting = _Counting(model)
    first = _prepare(_objective(start, data, tmp_path / "a", pairs, held_out), counting)
    assert counting.calls > 0
    assert torch.allclose(first.reference, _per_batch(model, pairs), atol=1e-5)
    assert torch.allclose(first.held_out_reference, _per_batch(model, held_out), atol=1e-5)
    files = reference_files(tmp_path / "a")
    assert set(files) == {"train", "val"} and files["train"] != files["val"]
    for name, path in files.items():
        assert path.parent == tmp_path / "pairs.jsonl.herd-reference"
        assert path.name.startswith("reference_logps-") and path.suffix == ".safetensors"
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        assert meta["complete"] == "true" and meta["pairs_sha256"] and meta["format"]
        assert json.loads(meta["start"])["path"] == str(start.resolve())
        assert torch.equal(load_reference_logps(path), getattr(first, _attr(name)))
    record = json.loads((tmp_path / "a" / REFERENCE_RECORD).read_text())
    assert record["tables"]["train"]["pairs"] == 12
    stamps = {p: p.stat().st_mtime_ns for p in files.values()}

    # another run (another alpha, say) from the same start on the same pairs: read, not computed
    capsys.readouterr()
    counting.calls = 0
    second = _prepare(_objective(start, data, tmp_path / "b", pairs, held_out), counting)
    assert counting.calls == 0
    assert "reusing" in capsys.readouterr().err
    assert torch.equal(second.reference, first.reference)
    assert reference_files(tmp_path / "b") == files
    assert {p: p.stat().st_mtime_ns for p in files.values()} == stamps


def _attr(name):
    return "reference" if name == "train" else "held_out_reference"


def test_what_changes_the_numbers_changes_the_fingerprint(world, tmp_path):
    start, _, model = world
    pairs = PreferenceBatches(_pairs(6), 2)
    cpu = torch.device("cpu")

    def fingerprint(m=model, p=pairs, s=start):
        return reference_fingerprint(start_stamp(s), p, m, cpu)["fingerprint"]

    base = fingerprint()
    assert fingerprint() == base
    last = _pairs(6)[5]
    changed = [*_pairs(6)[:5], last._replace(chosen_mask=[1, *last.chosen_mask[1:]])]
    assert fingerprint(p=PreferenceBatches(changed, 2)) != base  # one mask value differs
    assert fingerprint(p=PreferenceBatches(_pairs(6)[:4], 2)) != base  # fewer pairs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fingerprint() != base  # the pass's compute dtype
    assert fingerprint(m=herd.build_model(CONFIG, seed=0).double()) != base  # parameter dtype
    wider = CONFIG.to_dict() | {"rope_theta": 500000.0}
    assert fingerprint(m=herd.build_model(herd.ModelConfig(**wider), seed=0)) != base
    # the start: another folder, or its weights rewritten (same size, new mtime)
    copy = tmp_path / "copy"
    save_herd_folder(CONFIG, model.state_dict(), copy)
    assert fingerprint(s=copy) != base
    weights = start / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fingerprint() != base


def test_lora_at_the_start_shares_the_table(world):
    """Adapters start at B = 0: the start's log-probs, so the same fingerprint and numbers."""
    from herd.model.lora import LoraConfig, apply_lora

    start, _, model = world
    pairs = PreferenceBatches(_pairs(4), 2)
    cpu = torch.device("cpu")
    plain = reference_fingerprint(start_stamp(start), pairs, model, cpu)
    adapted = herd.build_model(CONFIG, seed=0)
    apply_lora(adapted, LoraConfig(r=2, alpha=4.0, target_modules=("q_proj", "w2")))
    assert reference_fingerprint(start_stamp(start), pairs, adapted, cpu) == plain


def test_another_start_or_other_pairs_are_recomputed(world, tmp_path):
    start, data, model = world
    pairs = _pairs(8)
    _prepare(_objective(start, data, tmp_path / "a", pairs), model)
    before = reference_files(tmp_path / "a")["train"]
    # the start's weights rewritten with other values: a new table, the right numbers
    other = herd.build_model(CONFIG, seed=1)
    save_herd_folder(CONFIG, other.state_dict(), start, overwrite=True)
    counting = _Counting(other)
    again = _prepare(_objective(start, data, tmp_path / "b", pairs), counting)
    assert counting.calls > 0 and reference_files(tmp_path / "b")["train"] != before
    assert torch.allclose(again.reference, _per_batch(other, pairs), atol=1e-5)
    # other pairs in the same data file's folder: their own table too
    counting.calls = 0
    _prepare(_objective(start, data, tmp_path / "c", _pairs(8, seed=2)), counting)
    assert counting.calls > 0 and before.is_file()


def test_an_interrupted_pass_resumes_from_the_stored_pairs(world, tmp_path):
    start, data, model = world
    pairs = _pairs(40)  # data.batch_size 2: windows of 32 pairs, each stored when done
    counting = _Counting(model)
    reference_pass(counting, PreferenceBatches(pairs[:32], 2), 2, 40, None)
    first_window = counting.calls
    killed = _Counting(model, stop_at=first_window + 1)  # killed in the second window
    with pytest.raises(KeyboardInterrupt):
        _prepare(_objective(start, data, tmp_path / "a", pairs), killed)
    (path,) = (tmp_path / "pairs.jsonl.herd-reference").glob("*.safetensors")
    assert load_reference_logps(path, partial=True).shape == (32, 2)
    with pytest.raises(HerdError, match="incomplete"):
        load_reference_logps(path)
    partial = path.read_bytes()

    counting.calls = 0
    reference_pass(counting, PreferenceBatches(pairs[32:], 2), 2, 40, None)
    last_pairs, counting.calls = counting.calls, 0
    resumed = _prepare(_objective(start, data, tmp_path / "a", pairs), counting)
    assert counting.calls == last_pairs  # only the 8 pairs not stored
    assert torch.allclose(resumed.reference, _per_batch(model, pairs), atol=1e-5)
    assert _complete(path) and reference_files(tmp_path / "a")["train"] == path

    # a partial table of other pairs under this name is not resumed from
    path.write_bytes(partial)
    rows = load_reference_logps(path, partial=True)
    with safe_open(path, "pt") as f:
        meta = {**f.metadata(), "pairs_sha256": "0" * 64}
    save_file({"reference_logps": rows}, path, metadata=meta)
    counting.calls = 0
    again = _prepare(_objective(start, data, tmp_path / "a", pairs), counting)
    assert counting.calls == first_window + last_pairs  # all 40 pairs again
    assert torch.equal(again.reference, resumed.reference)


def _complete(path):
    with safe_open(path, "pt") as f:
        return f.metadata()["complete"] == "true"


def test_a_damaged_or_foreign_table_is_recomputed_not_trusted(world, tmp_path, capsys):
    start, data, model = world
    pairs = _pairs(6)
    expected = _prepare(_objective(start, data, tmp_path / "a", pairs), model).reference
    path = reference_files(tmp_path / "a")["train"]
    with safe_open(path, "pt") as f:
        meta = f.metadata()

    def recomputed(why):
        capsys.readouterr()
        counting = _Counting(model)
        again = _prepare(_objective(start, data, tmp_path / "b", pairs), counting)
        assert counting.calls > 0 and why in capsys.readouterr().err
        assert torch.equal(again.reference, expected)
        assert torch.equal(load_reference_logps(path), expected)  # the file is whole again

    # other numbers under this table's own metadata: its checksum no longer holds
    save_file({"reference_logps": torch.full((6, 2), -50.0)}, path, metadata=meta)
    recomputed("damaged")
    # a table of another fingerprint under this name (renamed, say), checksum and all
    other = {**meta, "pairs_sha256": "0" * 64}
    save_file({"reference_logps": expected.clone()}, path, metadata=other)
    recomputed("another pairs_sha256")
    # not a safetensors file at all (a write cut short by a full disk)
    path.write_bytes(path.read_bytes()[:40])
    recomputed("not a readable reference table")


def test_a_table_leaves_no_inference_tensor_behind(world, tmp_path):
    """The pass runs under inference_mode; the table it gives takes part in autograd."""
    start, data, model = world
    objective = _prepare(_objective(start, data, tmp_path / "a", _pairs(4)), model)
    assert not objective.reference.is_inference()
    policy = torch.zeros(4, requires_grad=True)
    (policy - objective.reference[:, 0]).sum().backward()
    loss_sum = objective.loss_sum(model, objective.batches.next_micro_batch())
    loss_sum.backward()
    assert model.output.weight.grad is not None


def test_reference_files_of_an_older_run_folder(tmp_path):
    """Runs before the tables moved beside the data kept them in the run folder."""
    old = tmp_path / "old"
    old.mkdir()
    save_file({"reference_logps": torch.zeros(2, 2)}, old / "reference_logps_val.safetensors")
    assert reference_files(old) == {"val": old / "reference_logps_val.safetensors"}
    with pytest.raises(HerdError, match=r"reference\.json: not found"):
        reference_files(tmp_path)
