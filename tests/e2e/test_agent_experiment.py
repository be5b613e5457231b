"""experiments/agent.py end to end in its --quick form: the world, module rows, tokenizer, index,
`herd sft`'s code, then the agent with and without search, memory (across a restart of the
store) and tools, and each module alone; a rerun reuses the finished run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# the experiment's folder, as when it runs as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))


def test_quick_run_reports_every_arm_and_module(tmp_path):
    import agent

    result = agent.main(["--quick", "--quiet", "--out", str(tmp_path)])
    arms = {"search": ("with_search", "without_search", "questions"),
            "memory": ("with_memory", "without_memory", "probes"),
            "code": ("with_tools", "without_tools", "questions")}  # fmt: skip
    for section, (with_, without, n) in arms.items():
        assert 0 <= result[section][with_] <= 1 and 0 <= result[section][without] <= 1
        assert result[section][n] > 0
    assert result["memory"]["partners"] == 2 and 0 <= result["memory"]["gold_note_stored"] <= 1
    assert set(result["modules"]) == {"search_decision", "memory_decision", "search_query",
                                      "search_knowledge", "memory_generator", "memory_knowledge",
                                      "contextual_knowledge"}  # fmt: skip
    for r in result["modules"].values():
        assert 0 <= r["accuracy"] <= 1 and r["turns"] > 0
    assert set(result["rows"]) == set(agent.agent_data.MODULE_ROWS) and min(result["rows"].values())
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["search"] == result["search"]
    for name in ("summary.md", "agent.png", "examples.jsonl", "index/index.json"):
        assert (tmp_path / name).is_file(), name
    # the restart: session one's notes are in the store the probes reopened
    assert list((tmp_path / "memory").glob("*.db"))

    checkpoint = next((tmp_path / "run" / "checkpoints").iterdir())
    stamp = checkpoint.stat().st_mtime_ns
    again = agent.main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert checkpoint.stat().st_mtime_ns == stamp  # reused, not retrained
    assert again["train"] == result["train"]
    for section in ("search", "memory", "code", "modules"):
        assert again[section] == result[section]  # greedy: the same numbers
