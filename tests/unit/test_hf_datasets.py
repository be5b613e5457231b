"""Tests of herd/data/hf_datasets.py through herd/data/chat_data.py: SFT and DPO rows from a
Hugging Face dataset name resolved offline from the Hub's file cache, and from folders written by
`save_to_disk`, give the tokenized examples of the same rows in JSONL; `data.split` picks the
split; what cannot be read is one HerdError line.

The offline runs are separate processes: `datasets` and `huggingface_hub` read HF_HOME and
HF_HUB_OFFLINE once, when imported, so only a fresh process sees them as a user's does. No
network is used (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets  # a dev dependency: missing, the tests fail rather than skip
import pytest

from herd import load_tokenizer
from herd.data.chat_data import load_dpo, load_sft
from herd.errors import HerdError
from tests import references

ROOT = Path(__file__).resolve().parents[2]
SEQ_LEN = 256


def _chat(k: int) -> dict:
    messages = [
        {"role": "user", "content": f"What is {k} plus {k}?"},
        {"role": "assistant", "content": f"{2 * k}."},
    ]
    if k % 3 == 0:
        messages.insert(0, {"role": "system", "content": "Answer with a number."})
    return {"messages": messages}


def _pair(k: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"What is {k} times two?"}],
        "chosen": [{"role": "assistant", "content": f"{2 * k}"}],
        "rejected": [{"role": "assistant", "content": f"{2 * k + 1}"}],
    }


# train rows hold a malformed one (no assistant turn), so row numbers and counts are checked too
SFT_ROWS = {
    "train": [_chat(k) for k in range(4)]
    + [{"messages": [{"role": "user", "content": "Hello?"}]}]
    + [_chat(k) for k in range(4, 7)],
    "test": [_chat(k) for k in range(10, 13)],
}
DPO_ROWS = {"train": [_pair(k) for k in range(5)], "test": [_pair(k) for k in range(10, 12)]}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _hub_cache(hub: Path, repo: str, files: dict[str, bytes]) -> None:
    """Dataset `repo` in the Hub's file cache as `hf download --repo-type dataset` leaves it:
    blobs named by their hash, a snapshot of relative links to them, refs/main naming it."""
    folder = hub / ("datasets--" + repo.replace("/", "--"))
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = folder / "snapshots" / commit
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def _parquet(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


def _examples(examples: list) -> list[tuple]:
    """What tokenization made of each kept row (examples, or their fields as dicts), with its
    row number: the names before it differ by source."""
    out = []
    for e in examples:
        fields = dict(e if isinstance(e, dict) else vars(e))
        row = int(fields.pop("source").rsplit(":", 1)[1])
        out.append((row, *fields.values()))
    return out


# Run in a fresh process with HF_HOME and HF_HUB_OFFLINE set: (name, split) sources loaded with
# load_sft / load_dpo, each answer as its examples (JSON) or its HerdError message.
WORKER = """
import json, sys
from herd import load_tokenizer
from herd.errors import HerdError
from herd.data.chat_data import load_dpo, load_sft
tok = load_tokenizer(sys.argv[1])
out = []
for kind, name, split in json.loads(sys.argv[2]):
    try:
        if kind == "sft":
            data = load_sft(tok, name, int(sys.argv[3]), split=split)
        else:
            data = load_dpo(tok, name, int(sys.argv[3]), split=split)
        out.append({"examples": [vars(e) for e in data.examples], "counts": data.counts})
    except HerdError as e:
        out.append({"error": str(e)})
print(json.dumps(out))
"""
JOBS = [
    ("sft", "someorg/chats", "train"),
    ("sft", "someorg/chats", "test"),
    ("dpo", "someorg/pairs", "train"),
    ("dpo", "someorg/pairs", "test"),
    ("sft", "someorg/chats", "validation"),
    ("sft", "someorg/nothing", "train"),
]


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """JOBS' answers in a process offline, with the two datasets in a fresh HF_HOME's Hub cache:
    chats as Parquet (as the Hub's parquet conversion stores them), pairs as JSONL."""
    home = tmp_path_factory.mktemp("hf_home")
    _hub_cache(
        home / "hub",
        "someorg/chats",
        {f"data/{s}-00000-of-00001.parquet": _parquet(rows) for s, rows in SFT_ROWS.items()},
    )
    pairs = {
        f"data/{s}.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()
        for s, rows in DPO_ROWS.items()
    }
    _hub_cache(home / "hub", "someorg/pairs", {**pairs, "README.md": b"# pairs\n"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
    )
    tokenizer = str(references.llama3_tokenizer())
    cmd = [sys.executable, "-c", WORKER, tokenizer, json.dumps(JOBS), str(SEQ_LEN)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any((home / "datasets").glob("someorg*"))  # streamed: nothing prepared or copied
    return dict(zip(JOBS, answers, strict=True))


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(references.llama3_tokenizer())


@pytest.fixture(scope="module")
def from_jsonl(llama3, tmp_path_factory):
    """The examples of the same rows read from JSONL files, by split."""
    root = tmp_path_factory.mktemp("jsonl")
    sft = {
        s: load_sft(llama3, _jsonl(root / f"sft-{s}.jsonl", r), SEQ_LEN)
        for s, r in SFT_ROWS.items()
    }
    dpo = {
        s: load_dpo(llama3, _jsonl(root / f"dpo-{s}.jsonl", r), SEQ_LEN)
        for s, r in DPO_ROWS.items()
    }
    return {"sft": sft, "dpo": dpo}


@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_hub_cache_offline_gives_the_jsonl_examples(offline, from_jsonl, kind, split):
    name = "someorg/chats" if kind == "sft" else "someorg/pairs"
    answer = offline[(kind, name, split)]
    assert "error" not in answer, answer
    expected = from_jsonl[kind][split]
    assert _examples(answer["examples"]) == _examples(expected.examples)
    assert answer["counts"] == expected.counts
    assert all(e["source"].startswith(f"{name}:") for e in answer["examples"])
    if kind == "sft" and split == "train":
        assert expected.counts["malformed"] == 1
        assert _examples(expected.examples)[4][0] == 6  # row 5 skipped, named


def test_hub_cache_offline_errors_are_one_line(offline):
    bad_split = offline[("sft", "someorg/chats", "validation")]["error"]
    assert bad_split.startswith("dataset 'someorg/chats' (cached in ")
    assert "validation" in bad_split and "\n" not in bad_split
    unknown = offline[("sft", "someorg/nothing", "train")]["error"]
    assert unknown.startswith("dataset 'someorg/nothing': not in the Hugging Face caches (")
    assert "HF_HUB_OFFLINE is set" in unknown and "hf download --repo-type dataset" in unknown
    assert "\n" not in unknown


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """save_to_disk folders: a DatasetDict of both splits, and a Dataset of the train split."""
    root = tmp_path_factory.mktemp("saved")
    for kind, rows in (("sft", SFT_ROWS), ("dpo", DPO_ROWS)):
        splits = {s: datasets.Dataset.from_list(r) for s, r in rows.items()}
        datasets.DatasetDict(splits).save_to_disk(str(root / kind / "dict"))
        splits["train"].save_to_disk(str(root / kind / "one"))
    return root


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_saved_folders_give_the_jsonl_examples(saved, llama3, from_jsonl, kind):
    load = load_sft if kind == "sft" else load_dpo
    for split in ("train", "test"):
        data = load(llama3, saved / kind / "dict", SEQ_LEN, split=split)
        assert _examples(data.examples) == _examples(from_jsonl[kind][split].examples)
        assert data.examples[0].source == f"{saved / kind / 'dict'}:1"
    one = load(llama3, saved / kind / "one", SEQ_LEN)  # a Dataset: its one split
    assert _examples(one.examples) == _examples(from_jsonl[kind]["train"].examples)


def test_saved_folder_errors(saved, llama3, tmp_path):
    folder = saved / "sft" / "dict"
    with pytest.raises(HerdError, match=r"dict: no split 'validation' \(data.split; it has "):
        load_sft(llama3, folder, SEQ_LEN, split="validation")
    recorded = tmp_path / "recorded"  # a split saved alone remembers which one it was
    datasets.Dataset.from_list(SFT_ROWS["test"], split="test").save_to_disk(str(recorded))
    assert len(load_sft(llama3, recorded, SEQ_LEN, split="test").examples) == 3
    with pytest.raises(HerdError, match="recorded: holds the 'test' split, not 'train'"):
        load_sft(llama3, recorded, SEQ_LEN)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{")
    with pytest.raises(HerdError, match="broken: not a readable saved dataset"):
        load_sft(llama3, broken, SEQ_LEN)


def test_sft_reads_data_split(saved, tmp_path):
    """`herd sft`'s data comes from data.split of a saved DatasetDict."""
    from herd.posttrain.sft import load_sft_config, sft_data

    checkpoint = tmp_path / "start"  # sft_data needs the start's tokenizer only
    checkpoint.mkdir()
    (checkpoint / "tokenizer.model").write_bytes(references.llama3_tokenizer().read_bytes())
    values = {
        "model.checkpoint": str(checkpoint),
        "data.path": str(saved / "sft" / "dict"),
        "data.seq_len": str(SEQ_LEN),
        "data.batch_size": "1",
        "data.val_fraction": "0",
    }
    for split, conversations in (("train", 7), ("test", 3)):
        run = load_sft_config(None, {**values, "data.split": split})
        assert run.data.split == split
        data = sft_data(run)
        assert len(data.source.examples) == conversations
