"""Tests of herd/posttrain/gatt.py (Ghost Attention data, `herd gatt`) and what it relies on: the
SFT loss flag ("weight": 0 on an assistant message, herd/tokenizer/chat.py and chat_data.py) and
sampling prompts of different lengths together (`herd.generation.generate_batch`)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import herd
from herd import load_tokenizer
from herd.checkpoint.io import save_herd_folder
from herd.data.chat_data import check_sft_row, load_sft
from herd.errors import HerdError
from herd.generation import generate, generate_batch
from herd.posttrain.gatt import (
    FIGURES,
    HOBBIES,
    LANGUAGES,
    Dialogue,
    _sample_dialogues,
    read_instructions,
    sampling_messages,
    sampling_settings,
    synthetic_instructions,
    training_rows,
)
from herd.tokenizer.chat import encode_dialog
from herd.vocab.bpe import train_bpe
from tests import references
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error
from tests.tokenizer_corpus import CORPUS

INSTRUCTION = "Always answer in French."
DIALOGUE = Dialogue("d.jsonl:1", None, ["Hi there", "What is two plus two?", "And three?"])
REPLIES = ["Bonjour !", "Quatre.", "Cinq."]


def _users(row):
    return [m["content"] for m in row if m["role"] == "user"]


def test_rows_keep_the_instruction_in_the_first_turn_only():
    (row,) = training_rows(DIALOGUE, INSTRUCTION, REPLIES)
    assert row[0] == {"role": "system", "content": INSTRUCTION}
    assert _users(row) == DIALOGUE.users  # the user turns as written, no instruction
    replies = [m for m in row if m["role"] == "assistant"]
    assert [m["content"] for m in replies] == REPLIES
    assert [m.get("weight", 1) for m in replies] == [0, 0, 1]  # only the last turn is trained

    (row,) = training_rows(DIALOGUE, INSTRUCTION, REPLIES, placement="first-user")
    assert row[0]["role"] == "user" and row[0]["content"] == f"Hi there\n\n{INSTRUCTION}"
    assert _users(row)[1:] == DIALOGUE.users[1:]
    # the first turn is exactly what the model was sampled with
    assert row[0] == sampling_messages(DIALOGUE, INSTRUCTION, [])[0]

    with_system = Dialogue("d.jsonl:2", "Be kind.", DIALOGUE.users)
    (row,) = training_rows(with_system, INSTRUCTION, REPLIES)
    assert row[0] == {"role": "system", "content": f"Be kind.\n\n{INSTRUCTION}"}
    (row,) = training_rows(with_system, INSTRUCTION, REPLIES, placement="first-user")
    assert row[0] == {"role": "system", "content": "Be kind."} and INSTRUCTION in row[1]["content"]

    rows = training_rows(DIALOGUE, INSTRUCTION, REPLIES, every_turn=True)
    assert [len(_users(r)) for r in rows] == [1, 2, 3]
    for r in rows:
        weights = [m.get("weight", 1) for m in r if m["role"] == "assistant"]
        assert weights == [0] * (len(weights) - 1) + [1]
    with pytest.raises(HerdError, match="placement"):
        training_rows(DIALOGUE, INSTRUCTION, REPLIES, placement="everywhere")


def test_sampling_puts_the_instruction_beside_every_user_turn():
    messages = sampling_messages(DIALOGUE, INSTRUCTION, REPLIES[:2])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert _users(messages) == [f"{u}\n\n{INSTRUCTION}" for u in DIALOGUE.users]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == REPLIES[:2]


def test_synthetic_instructions_combine_categories_and_shorten_half():
    got = synthetic_instructions(400, seed=1)
    assert got == synthetic_instructions(400, seed=1) and got != synthetic_instructions(400, 2)
    short = [x for x in got if x.startswith(("Hobby:", "Language:", "Figure:"))]
    assert 0.3 < len(short) / len(got) < 0.7  # about half start with a shortened part
    values = [*HOBBIES, *LANGUAGES, *FIGURES]
    for x in got:
        assert 1 <= sum(v in x for v in values) <= 2
    combined = [x for x in got if sum(v in x for v in values) == 2]
    assert len(combined) > 100
    assert any("Napoleon" in x for x in got) and any("French" in x for x in got)
    assert all(sum(v in x for v in values) == 1 for x in synthetic_instructions(50, 0, 1))


def test_read_instructions(tmp_path):
    f = tmp_path / "inst.txt"
    f.write_text("# one per line\nSpeak like a pirate.\n\n  Figure: Napoleon.  \n", "utf-8")
    assert read_instructions(f) == ["Speak like a pirate.", "Figure: Napoleon."]
    f.write_text("# nothing\n\n", "utf-8")
    with pytest.raises(HerdError, match="holds no instruction"):
        read_instructions(f)
    with pytest.raises(HerdError, match="no such instructions file"):
        read_instructions(tmp_path / "missing.txt")


@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_weight_zero_gives_earlier_replies_exactly_no_loss(name, tmp_path):
    tok = load_tokenizer(getattr(references, f"{name}_tokenizer")())
    (row,) = training_rows(DIALOGUE, INSTRUCTION, REPLIES)
    path = tmp_path / "gatt.jsonl"
    path.write_text(json.dumps({"messages": row}) + "\n", "utf-8")
    (example,) = load_sft(tok, path, 512, strict=True).examples
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in row]
    full = encode_dialog(tok, unweighted, add_generation_prompt=False)
    assert example.ids == full.ids  # the flag changes the mask, never the tokens
    trained = [t for t, m in zip(example.ids, example.mask, strict=True) if m]
    stop = tok.special_tokens["<|eot_id|>"] if name == "llama3" else tok.eos_id
    assert trained[-1] == stop and tok.decode(trained[:-1]).strip() == REPLIES[-1]
    # every token the full mask trains and the weighted one does not is an earlier reply's
    dropped = [t for t, a, b in zip(full.ids, full.mask, example.mask, strict=True) if a and not b]
    text = tok.decode(dropped)
    assert all(r in text for r in REPLIES[:2]) and REPLIES[-1] not in text
    assert sum(full.mask) - sum(example.mask) == len(dropped) > 0


def test_weight_flag_is_validated():
    ok = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 1}]
    assert check_sft_row({"messages": ok}, "llama3")[1]["weight"] == 1
    bad = [
        ({"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}),
        ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}),
        ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": True}),
    ]
    for messages in bad:
        with pytest.raises(ValueError, match="expected 0 or 1"):
            check_sft_row({"messages": list(messages)}, "llama3")
    silent = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]
    with pytest.raises(ValueError, match="every assistant turn has weight 0"):
        check_sft_row({"messages": silent}, "llama3")


# --- sampling and the command, on a tiny checkpoint -------------------------------------------------

CONFIG = herd.ModelConfig(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=320, ffn_dim=96, max_seq_len=256
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gatt")
    (root / "corpus.txt").write_text("\n".join(CORPUS[:10]) * 10, encoding="utf-8")
    tok_dir = train_bpe([root / "corpus.txt"], 320, root / "tok", show_progress=False)
    model = herd.build_model(CONFIG, seed=3)
    files = [tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]
    ckpt = save_herd_folder(CONFIG, model.state_dict(), root / "tiny", tokenizer=files)
    dialogues = root / "dialogues.jsonl"
    rows = []
    for k in range(7):
        messages = [{"role": "system", "content": "Be brief."}] if k % 3 == 0 else []
        for t in range(1 + k % 3):
            messages += [
                {"role": "user", "content": f"Question {k}.{t}: the quick brown fox?"},
                {"role": "assistant", "content": f"Old answer {t}."},
            ]
        rows.append(json.dumps({"messages": messages}))
    long = "The quick brown fox jumps over the lazy dog. " * 2  # ~72 tokens: 3 turns overflow
    messages = [{"role": "user", "content": long}, {"role": "assistant", "content": "Old."}] * 3
    rows.append(json.dumps({"messages": messages}))
    dialogues.write_text("\n".join(rows) + "\n", "utf-8")
    return ckpt, dialogues, herd.load(ckpt).eval(), load_tokenizer(ckpt)


def test_batched_sampling_matches_one_prompt_at_a_time(tiny):
    """generate_batch with a generator per row (as gatt samples): greedy rows equal `generate`;
    sampled rows, and where each row leaves its generator, equal the row sampled alone."""
    _, _, model, tok = tiny
    prompts = [tok.encode(t, bos=True) for t in ("The quick", "SELECT id, name FROM", "Le")]
    gens = [torch.Generator().manual_seed(0) for _ in prompts]
    got = generate_batch(model, prompts, 12, 0.0, generators=gens)
    for p, ids in zip(prompts, got, strict=True):
        assert ids == generate(model, p, max_new_tokens=12, temperature=0.0)
    # sampled, with a stop id that ends one row early: every row's reply, and the state of its
    # generator (where its next turn's draws start), are those of the row sampled alone
    alone = generate_batch(
        model, prompts[:1], 12, 1.0, generators=[torch.Generator().manual_seed(1)]
    )
    stops = [alone[0][2]]
    gens = [torch.Generator().manual_seed(k + 1) for k in range(3)]
    together = generate_batch(model, prompts, 12, 1.0, stop_ids=stops, generators=gens)
    assert together[0][-1] == stops[0] and len(together[0]) <= 3  # the stop id ends the row
    assert not all(row[-1] in stops for row in together)  # the other rows ran on
    for k, p in enumerate(prompts):
        g = torch.Generator().manual_seed(k + 1)
        assert generate_batch(model, [p], 12, 1.0, stop_ids=stops, generators=[g])[0] == together[k]
        assert torch.equal(g.get_state(), gens[k].get_state())


def _run(tiny, out, *extra, check=True):
    ckpt, dialogues, _, _ = tiny
    return herd_cli_inprocess(
        "gatt", "--dialogues", dialogues, "--model", ckpt, "--out", out, "--max-new-tokens", "8",
        "--temperature", "1.0", "--keep-unfinished", "--device", "cpu", *extra, check=check,
    )  # fmt: skip


def test_cli_writes_sft_rows_that_load_sft_reads(tiny, tmp_path):
    ckpt, dialogues, _, tok = tiny
    inst = tmp_path / "inst.txt"
    inst.write_text("Answer in capitals.\nFigure: Napoleon.\n", "utf-8")
    out = tmp_path / "gatt.jsonl"
    proc = herd_cli_inprocess(
        "gatt", "--dialogues", dialogues, "--model", ckpt, "--out", out, "--instructions", inst,
        "--max-new-tokens", "8", "--keep-unfinished", "--device", "cpu", "--json",
    )  # fmt: skip
    counts = json.loads(proc.stdout)
    assert counts["dialogues"] == 8 and counts["rows"] + counts["empty"] == 8
    assert counts["rows"] >= 5 and "gatt: wrote" in proc.stderr
    assert counts["cut"] == 1  # the long dialogue's third turn does not fit 256 tokens
    assert not out.with_name(out.name + ".partial").exists()
    rows = [json.loads(x) for x in out.read_text("utf-8").splitlines()]
    originals = [json.loads(x) for x in dialogues.read_text("utf-8").splitlines()]
    for row in rows:
        messages, meta = row["messages"], row["gatt"]
        assert meta["instruction"] in ("Answer in capitals.", "Figure: Napoleon.")
        source = originals[int(meta["source"].rsplit(":", 1)[1]) - 1]["messages"]
        assert messages[0]["role"] == "system" and messages[0]["content"].endswith(
            meta["instruction"]
        )
        assert sum(meta["instruction"] in m["content"] for m in messages) == 1
        assert _users(messages) == _users(source)[: len(_users(messages))]
        replies = [m for m in messages if m["role"] == "assistant"]
        assert [m.get("weight", 1) for m in replies] == [0] * (len(replies) - 1) + [1]
        assert not any(m["content"].startswith("Old answer") for m in replies)  # resampled
    data = load_sft(tok, out, 256, strict=True)
    assert data.counts["kept"] == len(rows)

    # the same dialogues sampled one at a time: the same rows (each has its own generator)
    one = tmp_path / "one.jsonl"
    _run(tiny, one, "--instructions", inst, "--temperature", "0.8", "--batch-size", "1")
    assert one.read_text("utf-8") == out.read_text("utf-8")

    # --every-turn: one row per assistant turn
    every = tmp_path / "every.jsonl"
    _run(tiny, every, "--every-turn", "--temperature", "0")
    every_rows = [json.loads(x)["messages"] for x in every.read_text().splitlines()]
    depths = sorted(len(_users(r)) for r in every_rows)
    assert len(every_rows) > 7 and depths.count(1) == 8 and depths.count(2) >= 1


def test_interrupted_run_resumes_to_the_same_rows(tiny, tmp_path):
    ckpt, dialogues, model, tok = tiny
    whole = tmp_path / "whole.jsonl"
    _run(tiny, whole)
    out = tmp_path / "gatt.jsonl"
    # what an interrupted run leaves: the header, two finished dialogues, a line cut mid-write
    args = argparse.Namespace(
        dialogues=str(dialogues), model=str(ckpt), seed=0, max_new_tokens=8, temperature=1.0,
        top_p=0.95,
    )  # fmt: skip
    header = {"gatt_partial": 1, **sampling_settings(args, synthetic_instructions(1000, 0))}
    from herd.posttrain.gatt import read_dialogues

    d = read_dialogues(dialogues, "llama3")
    records = _sample_dialogues(
        model, tok, d, synthetic_instructions(1000, 0), [0, 1], 0, 8, 1.0, 0.95,
        set(tok.stop_ids) | {tok.eos_id},
    )  # fmt: skip
    partial = out.with_name(out.name + ".partial")
    lines = [json.dumps(x) for x in [header, *records]]
    partial.write_text("\n".join(lines) + '\n{"index": 2, "instr', "utf-8")
    proc = _run(tiny, out, "--batch-size", "3")
    assert proc.returncode == 0
    assert out.read_text("utf-8") == whole.read_text("utf-8") and not partial.exists()

    # a partial file of other settings is never overwritten
    partial.write_text("\n".join(lines) + "\n", "utf-8")
    one_line_error(_run(tiny, out, "--seed", "5", "--overwrite", check=False), "settings")
    assert partial.read_text("utf-8") == "\n".join(lines) + "\n"


def test_bad_input_is_one_line_and_loses_nothing(tiny, tmp_path):
    ckpt, dialogues, _, _ = tiny
    out = tmp_path / "gatt.jsonl"
    out.write_text("precious\n", "utf-8")
    proc = _run(tiny, out, check=False)
    one_line_error(proc, str(out), "--overwrite")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        dialogues.read_text("utf-8") + '{"messages": [{"role": "assistant", "content": "x"}]}\n'
    )
    cases = [
        (["--dialogues", bad], f"{bad}:9:", "expected 'user'"),
        (["--dialogues", tmp_path / "none.jsonl"], "none.jsonl", "no such dialogues file"),
        (["--instructions", tmp_path / "none.txt"], "none.txt", "no such instructions file"),
        (["--model", tmp_path / "nomodel"], "nomodel", "no such checkpoint"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
    ]
    for flags, *fragments in cases:
        proc = herd_cli_inprocess(
            "gatt", "--dialogues", dialogues, "--model", ckpt, "--out", out, "--overwrite",
            *flags, check=False,
        )  # fmt: skip
        one_line_error(proc, *fragments)
    proc = herd_cli("gatt", "--dialogues", bad, "--model", ckpt, "--out", out, "--overwrite",
                    check=False)  # fmt: skip
    one_line_error(proc, f"{bad}:9:")
    assert out.read_text("utf-8") == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_sft_trains_on_gatt_rows_last_turns_only(tiny, tmp_path):
    """`herd sft` runs on `herd gatt`'s output, and its packed targets hold exactly the trained
    replies' tokens: the last turn of each row, never an earlier one."""
    from herd.data.objectives import IGNORE_INDEX
    from herd.posttrain.sft import load_sft_config, sft_data

    ckpt, _, _, tok = tiny
    data = tmp_path / "gatt.jsonl"
    _run(tiny, data, "--every-turn")
    flags = {
        "model.checkpoint": str(ckpt), "data.path": str(data), "data.seq_len": "256",
        "data.batch_size": "2", "data.val_fraction": "0", "train.steps": "2",
        "train.log_every": "1", "train.out": str(tmp_path / "run"),
    }  # fmt: skip
    batches = sft_data(load_sft_config(None, flags)).source
    counted = sum(int((batches.row(r)[1] != IGNORE_INDEX).sum()) for r in range(batches.n_rows))
    rows = [json.loads(x)["messages"] for x in data.read_text("utf-8").splitlines()]
    # each row's trained reply: its content tokens and <|eot_id|> (the last reply is the only one)
    expected = sum(len(encode_dialog(tok, r, False).ids) - len(encode_dialog(tok, r[:-1]).ids)
                   for r in rows)  # fmt: skip
    assert counted == expected
    herd_cli_inprocess("sft", *[x for k, v in flags.items() for x in (f"--{k}", v)])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
