"""Best-of-n (rejection sampling): prompt reading, Llama 2's combined reward, the pool of earlier
rounds, resuming a partial output; the command end to end on a tiny policy and reward model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from herd.errors import HerdError
from herd.posttrain.best_of_n import (
    _resume,
    combined_rewards,
    prompt_key,
    read_pool,
    read_prompts,
)
from tests.sums_tokenizer import sums_tokenizer


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


# --- the command end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny chat policy and a tiny reward model (score head) sharing a trained BPE."""
    import herd
    from herd.checkpoint.io import save_herd_folder

    root = tmp_path_factory.mktemp("bon")
    tok = sums_tokenizer(root)
    shape = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=256)
    policy_config = herd.ModelConfig(vocab_size=tok.vocab_size, **shape)
    policy = save_herd_folder(
        policy_config, herd.build_model(policy_config, seed=1).state_dict(), root / "policy",
        tok.files(),
    )  # fmt: skip
    rm_config = herd.ModelConfig(vocab_size=tok.vocab_size, head="score", **shape)
    rm_model = herd.build_model(rm_config, seed=2)
    with torch.no_grad():  # scores spread wide enough that the best of K is clear
        rm_model.output.weight.mul_(50)
    rm = save_herd_folder(rm_config, rm_model.state_dict(), root / "rm", tok.files())
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": f"What is {a} plus {a + 1}?"} for a in range(3)]
    rows.append({"messages": [{"role": "user", "content": "What is 2 plus 2?"}], "safety": True})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return policy, rm, prompts, root


def _run(policy, rm, prompts, out, *extra, check=True):
    from tests.e2e.cli_runner import herd_cli_inprocess

    return herd_cli_inprocess(
        "best-of-n", policy, "--rm", rm, "--prompts", prompts, "--out", out, "--k", "4",
        "--max-new-tokens", "8", "--seed", "3", "--device", "cpu", *extra, check=check,
    )  # fmt: skip


def test_keeps_the_sample_the_reward_model_scores_highest(models, tmp_path):
    """Each kept reply is the highest-scored of the K samples that `generate(num_samples=K)`
    draws with the prompt's seed, scored independently here; --safety-rm applies R_c."""
    import herd
    from herd.posttrain.reward import (
        conversation_ids,
        load_reward_model,
        reward_pad_id,
        score_sequences,
    )

    policy, rm, prompts, _ = models
    out = tmp_path / "best.jsonl"
    _run(policy, rm, prompts, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model, tok = herd.load(policy), herd.load_tokenizer(policy)
    reward, rm_tok = load_reward_model(rm, "cpu")
    for i, row in enumerate(rows):
        messages = row["messages"][:-1]
        ids = tok.encode_dialog(messages).ids
        samples = herd.generate(model, ids, 8, temperature=1.2, seed=3 + i,
                                stop_ids=tok.stop_ids, num_samples=4)  # fmt: skip
        texts = []
        for s in samples:
            end = next((j for j, t in enumerate(s) if t in tok.stop_ids), len(s))
            texts.append(tok.decode(s[:end], skip_special=True).strip())
        texts = [t for t in texts if t]
        seqs = [conversation_ids(rm_tok, messages, t) for t in texts]
        scores = score_sequences(reward, seqs, 4, reward_pad_id(rm_tok))
        best = max(range(len(texts)), key=scores.__getitem__)
        assert row["messages"][-1]["content"] == texts[best]
        assert row["scores"]["helpful"] == pytest.approx(scores[best], abs=1e-5)
        assert row["reward"] == pytest.approx(sig(scores[best]), abs=1e-6)
        assert row["k"] == 4 and row["source"] == "sample"
    # a pooled earlier round's reply joins the candidates and wins where it scores higher
    pooled = tmp_path / "round2.jsonl"
    _run(policy, rm, prompts, pooled, "--pool", out, "--seed", "9")
    again = [json.loads(line) for line in pooled.read_text().splitlines()]
    for first, second in zip(rows, again, strict=True):
        assert second["reward"] >= first["reward"] - 1e-6
    # two reward models: the safety prompt (the last) is judged by the safety model alone
    safe = tmp_path / "safe.jsonl"
    _run(policy, rm, prompts, safe, "--safety-rm", rm)
    last = json.loads(safe.read_text().splitlines()[-1])
    assert last["reward"] == pytest.approx(sig(last["scores"]["safety"]), abs=1e-6)


def test_resumes_after_the_rows_already_written(models, tmp_path):
    policy, rm, prompts, _ = models
    whole = tmp_path / "whole.jsonl"
    _run(policy, rm, prompts, whole)
    rows = whole.read_text().splitlines()
    out = tmp_path / "resumed.jsonl"
    # an interrupted run: two rows written, the third torn mid-line
    (tmp_path / "resumed.jsonl.partial").write_text(rows[0] + "\n" + rows[1] + "\n" + rows[2][:9])
    proc = _run(policy, rm, prompts, out)
    assert "resuming after 2 of 4 prompts" in proc.stderr
    assert out.read_text().splitlines() == rows
    assert not (tmp_path / "resumed.jsonl.partial").exists()


def test_bad_input_is_one_line_and_keeps_what_exists(models, tmp_path):
    from tests.e2e.cli_runner import herd_cli, one_line_error

    policy, rm, prompts, _ = models
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    proc = herd_cli("best-of-n", policy, "--rm", rm, "--prompts", prompts, "--out", out,
                    check=False)  # fmt: skip
    one_line_error(proc, "already exists")
    assert out.read_text() == "keep me\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"messages": []}\n')
    proc = _run(policy, rm, bad, tmp_path / "o.jsonl", check=False)
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr
    proc = _run(policy, policy, prompts, tmp_path / "o.jsonl", check=False)  # an LM as --rm
    assert proc.returncode == 2 and "needs a reward model" in proc.stderr
