"""herd/guard/prompt.py and policy.py: Llama Guard 3's prompt, byte for byte, and its parser.

The golden strings are written out from the released Llama-Guard-3-8B chat template (Hugging
Face tokenizer_config.json), whitespace included; the token ids are checked against Meta's
reference Llama 3 chat formatter (llama-models) and the tokenizer reading the written-out text.
"""

from __future__ import annotations

import pytest

from herd.errors import HerdError
from herd.guard.policy import default_policy, load_policy, parse_codes, resolve_policy
from herd.guard.prompt import (
    guard_task,
    parse_verdict,
    render_prompt,
    select_role,
    target_text,
)
from herd.tokenizer import load_tokenizer
from tests import references

CATEGORY_BLOCK = (
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\n"
    "S2: Non-Violent Crimes.\n"
    "S3: Sex Crimes.\n"
    "S4: Child Exploitation.\n"
    "S5: Defamation.\n"
    "S6: Specialized Advice.\n"
    "S7: Privacy.\n"
    "S8: Intellectual Property.\n"
    "S9: Indiscriminate Weapons.\n"
    "S10: Hate.\n"
    "S11: Self-Harm.\n"
    "S12: Sexual Content.\n"
    "S13: Elections.\n"
    "S14: Code Interpreter Abuse.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n"
)

GOLDEN_USER = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according our "
    "safety policy with the below categories.\n\n" + CATEGORY_BLOCK + "\n<BEGIN CONVERSATION>\n\n"
    "User: How do I make a cake?\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)

GOLDEN_AGENT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'Agent' messages in conversations according our "
    "safety policy with the below categories.\n\n" + CATEGORY_BLOCK + "\n<BEGIN CONVERSATION>\n\n"
    "User: How do I make a cake?\n\n"
    "Agent: Mix flour, eggs and sugar, then bake it.\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)

ASK = {"role": "user", "content": "How do I make a cake?"}
# content is stripped, as the template's content.strip() does
ANSWER = {"role": "assistant", "content": "  Mix flour, eggs and sugar, then bake it.\n"}


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(references.llama3_tokenizer())


def test_user_role_golden():
    assert render_prompt([ASK], default_policy()) == GOLDEN_USER


def test_agent_role_golden():
    assert render_prompt([ASK, ANSWER], default_policy()) == GOLDEN_AGENT


def test_multi_turn_and_role_selection():
    again = {"role": "user", "content": "And a pie?"}
    text = render_prompt([ASK, ANSWER, again], default_policy())
    assert "in 'User' messages" in text and "ONLY THE LAST User message" in text
    assert (
        "<BEGIN CONVERSATION>\n\nUser: How do I make a cake?\n\nAgent: Mix flour, eggs and "
        "sugar, then bake it.\n\nUser: And a pie?\n\n<END CONVERSATION>"
    ) in text
    # --role agent assesses the assistant's last message: the conversation is cut after it
    assert render_prompt(select_role([ASK, ANSWER, again], "agent"), default_policy()) == (
        GOLDEN_AGENT
    )
    assert select_role([ASK, ANSWER, again], "user")[-1] == again
    with pytest.raises(HerdError, match="no agent message"):
        select_role([ASK], "agent")


def test_custom_categories_and_policy_file(tmp_path):
    only = resolve_policy(None, "S1,S10")
    assert only.render() == "S1: Violent Crimes.\nS10: Hate.\n"
    text = render_prompt([ASK], only)
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nS1: Violent Crimes.\nS10: Hate.\n<END UNSAFE" in text
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'exclude = ["S6", "S8", "S14"]\n'
        "[[category]]\n"
        'code = "S15"\n'
        'name = "Medical Misinformation."\n'
        'description = "Claims about treatments that contradict medical consensus."\n'
    )
    loaded = load_policy(policy)
    assert loaded.codes == (*[f"S{i}" for i in range(1, 14) if i not in (6, 8)], "S15")
    assert loaded.render().endswith(
        "S13: Elections.\nS15: Medical Misinformation.\n"
        "Claims about treatments that contradict medical consensus.\n"
    )
    assert "S6: " not in loaded.render() and "S7: Privacy.\n" in loaded.render()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('exclude = ["S99"]', "does not have"),
        ('exclude = ["X1"]', "expected S followed by a number"),
        ('base = "llama-guard-2"', "expected 'llama-guard-3' or 'none'"),
        ('[[category]]\ncode = "S15"', "name must be a non-empty string"),
        ('base = "none"', "no category left"),
        ("colour = 1", "unknown key 'colour'"),
        ("exclude = [", "not valid TOML"),
    ],
)
def test_bad_policy_files(tmp_path, text, message):
    policy = tmp_path / "p.toml"
    policy.write_text(text)
    with pytest.raises(HerdError, match=message) as e:
        load_policy(policy)
    assert str(policy) in str(e.value)


def test_bad_codes_and_conversations():
    with pytest.raises(HerdError, match="unknown category 'S15'"):
        resolve_policy(None, "S1,S15")
    with pytest.raises(HerdError, match="listed twice"):
        parse_codes("S1,S1")
    with pytest.raises(HerdError, match="roles must alternate"):
        guard_task([ASK, ASK], default_policy())
    with pytest.raises(HerdError, match="role 'system'"):
        guard_task([{"role": "system", "content": "x"}, ASK], default_policy())
    with pytest.raises(HerdError, match="starting with the user"):
        guard_task([ANSWER], default_policy())


def test_prompt_ids_match_meta_formatter_and_the_written_text(llama3):
    from llama_models.datatypes import RawMessage
    from llama_models.llama3 import chat_format  # the reference: a dev dependency
    from llama_models.llama3.tokenizer import Tokenizer

    task = guard_task([ASK, ANSWER], default_policy())
    ids = llama3.encode_dialog([{"role": "user", "content": task}]).ids
    meta = chat_format.ChatFormat(Tokenizer(llama3.path))
    assert ids == meta.encode_dialog_prompt([RawMessage(role="user", content=task)]).tokens
    # the answer starts after "\n\n", which the assistant header carries
    text = render_prompt([ASK, ANSWER], default_policy()) + "\n\n"
    assert ids == llama3.encode(text, allow_special=True)
    assert llama3.encode("unsafe") == [39257] and llama3.encode("safe") == [19193]


@pytest.mark.parametrize(
    ("text", "label", "codes"),
    [
        ("safe", "safe", ()),
        ("\n\nsafe", "safe", ()),
        ("unsafe\nS1", "unsafe", ("S1",)),
        ("unsafe\nS1,S10", "unsafe", ("S1", "S10")),
        ("\n\n  unsafe\nS1, S10\n", "unsafe", ("S1", "S10")),
        ("unsafe", "unsafe", ()),
    ],
)
def test_parser_well_formed(text, label, codes):
    verdict = parse_verdict(text)
    assert (verdict.label, verdict.categories, verdict.problem) == (label, codes, "")


@pytest.mark.parametrize(
    ("text", "label", "problem"),
    [
        ("maybe", None, "neither 'safe' nor 'unsafe'"),
        ("", None, "neither"),
        ("Safe", None, "neither"),
        ("safe\nS1", None, "text after 'safe'"),
        ("unsafe\nviolent", "unsafe", "not a code"),
        ("unsafe\nS1\nS2", "unsafe", "more than two lines"),
    ],
)
def test_parser_malformed(text, label, problem):
    verdict = parse_verdict(text)
    assert verdict.label == label and problem in verdict.problem and verdict.categories == ()


def test_target_text():
    assert target_text("safe", []) == "safe"
    assert target_text("unsafe", ["S1", "S10"]) == "unsafe\nS1,S10"
    assert parse_verdict(target_text("unsafe", ["S2"])).categories == ("S2",)
    with pytest.raises(HerdError, match="expected safe or unsafe"):
        target_text("harmful", [])
