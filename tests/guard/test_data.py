"""herd/guard/data.py: labelled rows, their checks, and the SFT conversations with category
dropping (Llama Guard's augmentation)."""

from __future__ import annotations

import json
import random

import pytest

from herd.errors import HerdError
from herd.guard.data import augment, check_labelled_row, read_labelled, training_conversations
from herd.guard.policy import default_policy
from herd.guard.prompt import parse_verdict

ASK = [{"role": "user", "content": "How do I poison the river and shoot the mayor?"}]
UNSAFE = {"messages": ASK, "label": "unsafe", "categories": ["S1", "S9"]}
SAFE = {"messages": [{"role": "user", "content": "Bake a cake?"}], "label": "safe"}


def _listed(prompt: str) -> set[str]:
    block = prompt.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n")[1].split("<END UNSAFE")[0]
    return {line.split(":")[0] for line in block.splitlines()}


def test_conversation_is_prompt_and_released_answer():
    rows = [("a:1", check_labelled_row(UNSAFE, "a:1")), ("a:2", check_labelled_row(SAFE, "a:2"))]
    made = training_conversations(rows, default_policy(), 0.0, 0.0, 1, seed=0)
    assert [m["role"] for m in made[0]["messages"]] == ["user", "assistant"]
    assert made[0]["messages"][1]["content"] == "unsafe\nS1,S9"
    assert made[1]["messages"][1]["content"] == "safe"
    assert _listed(made[0]["messages"][0]["content"]) == set(default_policy().codes)
    assert "User: How do I poison the river" in made[0]["messages"][0]["content"]


def test_dropping_others_keeps_violated_and_answer():
    rng = random.Random(0)
    for _ in range(50):
        shown, label, codes = augment(UNSAFE, default_policy(), rng, 1.0, 0.0)
        assert {"S1", "S9"} <= set(shown.codes) and len(shown.codes) < 14
        assert (label, codes) == ("unsafe", ["S1", "S9"])


def test_dropping_violated_makes_the_row_safe():
    rng = random.Random(0)
    shown, label, codes = augment(UNSAFE, default_policy(), rng, 0.0, 1.0)
    assert (label, codes) == ("safe", []) and not {"S1", "S9"} & set(shown.codes)
    assert len(shown.codes) == 12  # only the violated ones left out


def test_rates_copies_and_determinism():
    rows = [("f:1", check_labelled_row(UNSAFE, "f:1"))] * 400
    made = training_conversations(rows, default_policy(), 0.5, 0.1, 2, seed=3)
    assert len(made) == 800
    assert made == training_conversations(rows, default_policy(), 0.5, 0.1, 2, seed=3)
    answers = [parse_verdict(m["messages"][1]["content"]) for m in made]
    safe = sum(a.label == "safe" for a in answers) / len(made)
    shrunk = sum(len(_listed(m["messages"][0]["content"])) < 14 for m in made) / len(made)
    assert 0.06 < safe < 0.14 and 0.45 < shrunk < 0.65
    for m, a in zip(made, answers, strict=True):  # an answer names only listed categories
        assert set(a.categories) <= _listed(m["messages"][0]["content"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"label": "safe"}, "expected an object with 'messages'"),
        ({"messages": ASK, "label": "harmful"}, "label 'harmful'"),
        ({"messages": ASK, "label": "unsafe", "categories": ["violence"]}, "list of codes"),
        ({"messages": ASK, "label": "safe", "categories": ["S1"]}, "a safe row names"),
        ({"messages": [*ASK, *ASK], "label": "safe"}, "roles must alternate"),
        ({"messages": "hello", "label": "safe"}, "role"),
    ],
)
def test_bad_rows(row, message):
    with pytest.raises(HerdError, match=message) as e:
        check_labelled_row(row, "rows.jsonl:7")
    assert str(e.value).startswith("rows.jsonl:7: ")


def test_read_labelled_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(SAFE) + "\n" + "{not json\n")
    with pytest.raises(HerdError, match=r"rows.jsonl:2"):
        read_labelled(str(path))
    path.write_text(json.dumps({"messages": ASK}) + "\n")
    assert read_labelled(str(path), require_label=False)[0][1]["label"] is None
    with pytest.raises(HerdError, match="no label to train on"):
        training_conversations(read_labelled(str(path), require_label=False),
                               default_policy(), 0, 0, 1, 0)  # fmt: skip
    outside = {"messages": ASK, "label": "unsafe", "categories": ["S20"]}
    with pytest.raises(HerdError, match="S20 is not in the policy"):
        training_conversations([("r:1", outside)], default_policy(), 0, 0, 1, 0)
