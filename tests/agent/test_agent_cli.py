"""`herd agent CKPT` (the REPL), the turn log and ratings, `herd agent feedback export` into rows
that herd's SFT and DPO loaders read, and tool files; on a tiny random model with a herd-trained
Llama 3 tokenizer (what the model says does not matter here, only what is stored and exported)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import herd
from herd.agent.feedback import export_feedback
from herd.agent.llm import LocalChat
from herd.agent.memory import SCHEMA_VERSION, MemoryStore
from herd.agent.tool_calls import ToolCall
from herd.agent.toolbox import Toolbox, load_tool_file
from herd.agent.traces import TurnLog
from herd.checkpoint.io import save_herd_folder
from herd.data.chat_data import load_dpo, load_sft
from herd.errors import HerdError
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli_inprocess


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent-cli")
    (root / "corpus.txt").write_text("hello there, the search and the memory of a person. " * 40)
    tok_dir = train_bpe([root / "corpus.txt"], 300, root / "tok", show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    config = herd.ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                              vocab_size=tok.vocab_size, max_seq_len=2048)  # fmt: skip
    state = herd.build_model(config, seed=0).state_dict()
    return save_herd_folder(config, state, root / "model", tokenizer=tok.files())


def test_the_repl_logs_every_turn_and_stores_ratings(model_dir, tmp_path):
    db = tmp_path / "agent.db"
    lines = "hello there\n/good\nhow are you\n/fix I am well, thanks.\n/trace\n/memory\n/exit\n"
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "agent", str(model_dir), "--index", "none", "--memory",
         str(db), "--user", "ann", "--response-tokens", "8", "--trace"],
        input=lines, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rated turn 1 good" in proc.stderr and "rated turn 2 bad" in proc.stderr
    assert "-- turn 2 (id 2)" in proc.stderr and "memory_generator:partner" in proc.stderr
    with MemoryStore(db, "ann") as store:
        turns = TurnLog(store).turns()
        assert [(t.turn, t.rating, t.correction) for t in turns] == [
            (1, 1, None), (2, -1, "I am well, thanks.")
        ]  # fmt: skip
        assert turns[1].context == [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": turns[0].reply},
            {"role": "user", "content": "how are you"},
        ]
        assert store.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION == 2
        assert TurnLog(store).last_turn() == 2


def test_feedback_export_rows_are_read_by_sft_and_dpo(model_dir, tmp_path):
    tok = herd.load_tokenizer(model_dir)
    store = MemoryStore(tmp_path / "agent.db", "ann")
    log = TurnLog(store)
    response_prompt = [
        {"role": "system", "content": "Environment: ipython\n\nBe kind."},
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"function": {"name": "code_interpreter", "arguments": {"code": "print(6*7)"}}}]},
        {"role": "ipython", "content": "42"},
    ]  # fmt: skip
    trace = {"modules": [{"module": "response", "messages": response_prompt, "output": "42"}]}
    ask = [{"role": "user", "content": "What is 6 * 7?"}]
    good = log.add(1, ask, "It is 42.", trace, None)
    bad = log.add(2, ask, "It is 41.", trace, None)
    unrated_bad = log.add(3, ask, "No idea.", trace, None)
    refused = log.add(4, ask, "I can't help with that request.", {}, "input")
    log.rate(good, "good")
    log.rate(bad, "bad", "wrong number", "It is 42, the product of 6 and 7.")
    log.rate(unrated_bad, "bad")
    log.rate(refused, "bad")
    sft, dpo = tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl"
    counts = export_feedback(log, sft=sft, dpo=dpo)
    assert counts == {"good": 1, "bad": 2, "flagged": 1, "corrected": 1, "regenerated": 0,
                      "no_chosen": 1, "sft_rows": 1, "dpo_rows": 1}  # fmt: skip
    sft_data = load_sft(tok, sft, 1024, strict=True)
    dpo_data = load_dpo(tok, dpo, 1024, strict=True)
    assert sft_data.counts["kept"] == 1 and dpo_data.counts["kept"] == 1
    row = json.loads(dpo.read_text())
    assert row["prompt"] == response_prompt and row["feedback"] == "wrong number"
    assert (
        row["chosen"][0]["content"].startswith("It is 42,")
        and row["rejected"][0]["content"] == "It is 41."
    )
    # the plain dialogue instead of the module's prompt
    export_feedback(log, sft=sft, context="dialogue")
    assert json.loads(sft.read_text())["messages"] == [
        *ask,
        {"role": "assistant", "content": "It is 42."},
    ]
    # with a model, the bad reply without a correction gets a regenerated chosen side
    counts = export_feedback(
        log, dpo=dpo, context="dialogue", chat=LocalChat(herd.load(model_dir), tok)
    )
    assert counts["regenerated"] + counts["no_chosen"] == 1 and counts["corrected"] == 1
    for row in map(json.loads, dpo.read_text().splitlines()):
        assert row["chosen"] != row["rejected"]
    assert load_dpo(tok, dpo, 1024, strict=True).counts["kept"] == counts["dpo_rows"]
    store.close()


def test_ratings_are_checked(tmp_path):
    with MemoryStore(tmp_path / "a.db", "ann") as store:
        log = TurnLog(store)
        turn = log.add(1, [{"role": "user", "content": "hi"}], "hello", {}, None)
        for args, match in (((turn, "meh"), "expected 'good', 'bad'"),
                            ((turn, "good", None, "better"), "correction goes with a 'bad'"),
                            ((99, "good"), "no agent turn with id 99")):  # fmt: skip
            with pytest.raises(HerdError, match=match):
                log.rate(*args)
        assert log.rate(turn, "bad", "  ").feedback is None
        assert log.rate(turn, "good").rating == 1  # a later rating replaces the earlier one


def test_feedback_export_cli_and_its_errors(model_dir, tmp_path):
    db = tmp_path / "agent.db"
    with MemoryStore(db, "ann") as store:
        log = TurnLog(store)
        log.rate(log.add(1, [{"role": "user", "content": "hi"}], "hello", {}, None), "good")
    out = herd_cli_inprocess(
        "agent", "feedback", "export", "--memory", db, "--sft", tmp_path / "s.jsonl"
    )
    assert "wrote 1 rows" in out.stdout
    missing = herd_cli_inprocess("agent", "feedback", "export", "--memory", tmp_path / "no.db",
                                 "--sft", tmp_path / "x.jsonl", check=False)  # fmt: skip
    assert missing.returncode == 2 and "no such memory database" in missing.stderr
    assert not (tmp_path / "x.jsonl").exists()
    nothing = herd_cli_inprocess("agent", "feedback", "export", "--memory", db, check=False)
    assert nothing.returncode == 2 and "--sft" in nothing.stderr
    bad_tools = tmp_path / "tools.json"
    bad_tools.write_text('[{"type": "function", "function": {"name": "brave_search"}}]')
    proc = herd_cli_inprocess("agent", model_dir, "--index", "none", "--memory", db, "--tools",
                              bad_tools, check=False)  # fmt: skip
    assert proc.returncode == 2 and "redefines the built-in tool 'brave_search'" in proc.stderr


def test_tool_files_commands_and_the_declared_prompt(tmp_path):
    script = tmp_path / "weather.py"
    script.write_text(
        "import json, sys\nargs = json.load(sys.stdin)\nprint('sunny in ' + args['city'])\n"
    )
    tools = tmp_path / "tools.json"
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    tools.write_text(json.dumps([
        {**weather, "command": [sys.executable, str(script)]},
        {"type": "function", "function": {"name": "book_table"}},
    ]))  # fmt: skip
    functions, commands = load_tool_file(tools)
    assert [f["function"]["name"] for f in functions] == ["get_weather", "book_table"]
    assert "command" not in functions[0] and list(commands) == ["get_weather"]
    box = Toolbox(None, code=True, functions=functions, commands=commands)
    assert box.run(ToolCall("get_weather", {"city": "Oslo"})).output == "sunny in Oslo"
    assert (
        box.run(ToolCall("book_table", {})).output == "The tool book_table is not available here."
    )
    assert box.run(ToolCall("nope", {})).output == "There is no tool named nope."
    import datetime

    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Weather?"}]
    shown = box.prompt(messages, datetime.date(2024, 7, 23))
    assert shown[0]["content"] == (
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 23 Jul 2024\n\n"
        "Be kind."
    )
    assert shown[1]["content"].startswith("Given the following functions")
    assert '"name": "get_weather"' in shown[1]["content"] and shown[1]["content"].endswith(
        "Weather?"
    )
    searching = Toolbox(object(), code=False).prompt(messages, datetime.date(2024, 7, 23))
    assert searching == [  # Meta's Llama 3.1 template with builtin_tools=["brave_search"]
        {"role": "system", "content": "Environment: ipython\nTools: brave_search\n\nCutting "
         "Knowledge Date: December 2023\nToday Date: 23 Jul 2024\n\nBe kind."},
        messages[1],
    ]  # fmt: skip
    assert Toolbox(code=False).prompt(messages) == messages
    for text, match in (("{", "not valid JSON"), ("{}", "expected a JSON list"),
                        ('[{"type": "function"}]', r"\[0\].function: expected an object"),
                        ('[{"type": "function", "function": {"name": "f"}, "command": "ls"}]',
                         "command: expected a list of strings")):  # fmt: skip
        tools.write_text(text)
        with pytest.raises(HerdError, match=match):
            load_tool_file(tools)


def test_director_trains_from_the_ratings_and_the_repl_decodes_with_it(model_dir, tmp_path):
    db, out = tmp_path / "agent.db", tmp_path / "director"
    with MemoryStore(db, "ann") as store:
        log = TurnLog(store)
        for i in range(6):
            turn = log.add(i + 1, [{"role": "user", "content": f"hello {i}"}],
                           "the search" if i % 2 else "a person", {}, None)  # fmt: skip
            log.rate(turn, "good" if i % 2 else "bad")
        one_sided = tmp_path / "one.db"
    with MemoryStore(one_sided, "ann") as store:
        TurnLog(store).rate(
            TurnLog(store).add(1, [{"role": "user", "content": "hi"}], "x", {}, None), "good"
        )
    proc = herd_cli_inprocess(
        "agent", "director", model_dir, "--memory", one_sided, "--out", out, check=False
    )
    assert proc.returncode == 2 and "needs both good and bad" in proc.stderr and not out.exists()
    done = herd_cli_inprocess("agent", "director", model_dir, "--memory", db, "--out", out,
                              "--steps", "30", "--gamma", "2", "--context", "dialogue")  # fmt: skip
    assert "6 rated replies" in done.stdout and (out / "director.safetensors").is_file()
    assert json.loads((out / "director.json").read_text())["gamma"] == 2
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "agent", str(model_dir), "--index", "none", "--memory",
         str(tmp_path / "chat.db"), "--director", str(out), "--response-tokens", "4"],
        input="hello there\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gamma = herd_cli_inprocess("agent", model_dir, "--gamma", "1", check=False)
    assert gamma.returncode == 2 and "--gamma needs --director" in gamma.stderr
