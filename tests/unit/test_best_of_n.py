"""Best-of-n (rejection sampling): prompt reading, Llama 2's combined reward, the pool of earlier
rounds, resuming a partial output; the command end to end on a tiny policy and reward model."""

from __future__ import annotations

import json
import math

import pytest

from herd.errors import HerdError
from herd.posttrain.best_of_n import (
    _resume,
    combined_rewards,
    prompt_key,
    read_pool,
    read_prompts,
)


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_combined_reward_follows_llama2():
    helpful, safety = [2.0, -1.0, 0.5], [0.0, 3.0, -2.5]
    # no safety model: sigmoid of the helpfulness score
    assert combined_rewards(helpful, None, False) == pytest.approx([sig(h) for h in helpful])
    # R_c = R_s if safety prompt or R_s < 0.15 else R_h
    got = combined_rewards(helpful, safety, False)
    assert got == pytest.approx([sig(2.0), sig(-1.0), sig(-2.5)])  # sig(-2.5) = 0.076 < 0.15
    assert combined_rewards(helpful, safety, True) == pytest.approx([sig(s) for s in safety])


def test_read_prompts_and_bad_rows(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "Say hi"},
        {
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Hi"},
            ]
        },
        {"prompt": "How to pick a lock?", "safety": True},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = read_prompts(str(f), "llama3")
    assert [p["messages"][-1]["content"] for p in got] == ["Say hi", "Hi", "How to pick a lock?"]
    assert [p["safety"] for p in got] == [False, False, True]
    for bad, says in (
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         "expected 'user'"),
        ({"prompt": ""}, "non-empty"),
        ({"prompt": "x", "messages": []}, "either"),
        ({"prompt": "x", "safety": "yes"}, "'safety'"),
    ):  # fmt: skip
        f.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(HerdError, match=rf"p.jsonl:2: .*{says}"):
            read_prompts(str(f), "llama3")


def test_pool_keys_earlier_responses_by_prompt(tmp_path):
    prompt = [{"role": "user", "content": "Hi"}]
    f = tmp_path / "round1.jsonl"
    f.write_text(
        json.dumps({"messages": [*prompt, {"role": "assistant", "content": "Hello!"}]}) + "\n"
    )
    assert read_pool([str(f)]) == {prompt_key(prompt): ["Hello!"]}
    f.write_text(json.dumps({"messages": prompt}) + "\n")
    with pytest.raises(HerdError, match=r"round1\.jsonl:1"):
        read_pool([str(f)])


def test_resume_counts_whole_rows_and_cuts_a_torn_one(tmp_path):
    partial = tmp_path / "out.jsonl.partial"
    assert _resume(partial) == 0
    partial.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": ')
    assert _resume(partial) == 2
    assert partial.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
