"""`herd ppo` (herd/posttrain/ppo_run.py, ppo_rollout.py): rollouts, log-probs, KL, metrics,
checkpoints and exact resume, LoRA, bad input, and PPO raising a reward it can reach.

The reward model is a real `herd rm`-format checkpoint whose weights are set by hand so its score
is known: token t's embedding carries u(t) = ±1 (a fixed half of the vocabulary is "good") in
dimension 0; attention has zero queries and keys, so every position attends uniformly to all
before it, and its value/output projections carry dimension 0 alone, into dimension 1, which no
embedding uses; the MLPs add nothing. Dimension 1 of the last position's residual is then a
multiple of the mean of u over the conversation, and the head reads it after the final norm: the
score rises with the share of good tokens in the response. A policy that learns to write good tokens
raises it, which no unrelated change can do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import herd
from herd.checkpoint.io import save_herd_folder
from herd.posttrain.ppo import kl_penalised_rewards
from herd.posttrain.ppo_rollout import response_logits, token_logprobs
from herd.posttrain.ppo_run import PPO_DEFAULTS, TIMING_FIELDS, PPORunner
from herd.train.config import load_run_config
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

# the reward model known by rule, shared with the study (experiments/ppo_kl.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from ppo_kl import WORDS, rule_reward_model

SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96)


def make_checkpoints(root):
    """A tiny SFT policy, the reward model above and a prompt file under `root`."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{a} {b} {c}." for a in WORDS for b in WORDS for c in WORDS[:4]))
    tok = herd.load_tokenizer(train_bpe([corpus], 300, root / "tok", show_progress=False))
    policy = herd.ModelConfig(vocab_size=tok.vocab_size, tie_embeddings=True, **SHAPE)
    save_herd_folder(
        policy, herd.build_model(policy, seed=0).state_dict(), root / "sft", tok.files()
    )
    rm = herd.ModelConfig(vocab_size=tok.vocab_size, head="score", **SHAPE)
    save_herd_folder(rm, rule_reward_model(rm), root / "rm", tok.files())
    prompts = root / "prompts.jsonl"
    rows = [{"prompt": f"say {a} {b}"} for a in WORDS[:6] for b in WORDS[6:8]]
    rows[1] = {"messages": [{"role": "user", "content": "name a colour"}], "safety": True}
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("ppo"))


def _overrides(root, out, **extra) -> dict[str, str]:
    values = {
        "model.checkpoint": root / "sft",
        "data.path": root / "prompts.jsonl",
        "ppo.reward_model": root / "rm",
        "ppo.batch_size": 8,
        "ppo.mini_batch_size": 4,
        "ppo.max_new_tokens": 6,
        "train.steps": 3,
        "train.checkpoint_every": 2,
        "train.device": "cpu",
        "train.out": out,
        "optim.lr": "1e-3",
        **extra,
    }
    return {k: str(v) for k, v in values.items()}


def _runner(root, out, resume=False, **extra) -> PPORunner:
    run = load_run_config(None, _overrides(root, out, **extra), defaults=PPO_DEFAULTS)
    return PPORunner(run, out, resume=resume)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rollout_logprobs_equal_a_direct_recomputation_and_kl_starts_at_zero(setup, tmp_path):
    root, _ = setup
    runner = _runner(root, tmp_path / "run", **{"ppo.temperature": "0.7"})
    rollout, metrics = runner.rollout()
    # a direct recomputation, row by row, from the full logits of the policy's forward
    for b in range(rollout.ids.shape[0]):
        n = int(rollout.lengths[b])
        r = int(rollout.mask[b].sum())
        with torch.no_grad():
            logits = runner.policy(rollout.ids[b : b + 1, :n])[0].float() / 0.7
        logp = torch.log_softmax(logits, -1)
        tokens = rollout.ids[b, n - r : n]
        direct = logp[n - r - 1 : n - 1].gather(1, tokens[:, None]).squeeze(1)
        torch.testing.assert_close(rollout.logprobs[b, :r], direct, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rollout.response[b, :r], tokens)
    # the first rollout's policy is the reference: the KL is exactly zero, and the penalised
    # rewards hold the scores alone
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)
    assert metrics["kl"] == 0.0 and metrics["non_score_reward"] == 0.0
    # after one update the policy has moved: log-probs of the same tokens differ
    runner.update(rollout)
    with torch.no_grad():
        moved = token_logprobs(
            response_logits(runner.policy, rollout.ids, rollout.index, 0.7), rollout.response
        )
    kl = kl_penalised_rewards(
        torch.zeros(rollout.ids.shape[0]), moved, rollout.ref_logprobs, rollout.mask
    ).kl
    assert kl.abs().sum() > 0


def test_run_writes_metrics_checkpoints_and_resumes_exactly(setup, tmp_path):
    root, tok = setup
    whole = tmp_path / "whole"
    _runner(root, whole).fit(show_progress=False)
    lines = _metrics(whole)
    assert [x["step"] for x in lines] == [1, 2, 3]
    fields = (
        "reward", "score", "kl", "rlhf_reward", "policy_loss", "clip_fraction", "approx_kl",
        "value_loss", "value_clip_fraction", "entropy", "response_length", "tokens_per_s", "lr",
    )  # fmt: skip
    for name in fields:
        assert all(name in x for x in lines), name
    assert lines[0]["kl"] == 0.0 and lines[0]["episodes"] == 8
    assert all(0 < x["reward"] < 1 and 0 < x["response_length"] <= 6 for x in lines)
    assert (whole / "plots" / "ppo.png").is_file()
    # the policy is a herd folder `herd generate` loads; value/ is a reward-model folder
    ckpt = whole / "checkpoints" / "step-00000003"
    policy = herd.load(ckpt)
    ids = tok.encode("say red")
    assert len(herd.generate(policy, ids, max_new_tokens=3)) == 3
    assert herd.load(ckpt / "value").config.head == "score"

    # interrupted after iteration 2 (a checkpoint), then resumed: the same metrics
    cut = tmp_path / "cut"
    _runner(root, cut).fit(show_progress=False, stop_at=2)
    with open(cut / "metrics.jsonl", "a") as f:  # a line the interrupted run logged past it
        f.write(json.dumps({"step": 3, "reward": -1}) + "\n")
    resumed = _runner(root, cut, resume=True)
    assert resumed.step == 2
    resumed.fit(show_progress=False)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]

    assert strip(_metrics(cut)) == strip(lines)
    a, b = herd.load(ckpt), herd.load(cut / "checkpoints" / "step-00000003")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_lora_run_uses_the_adapter_free_policy_as_reference(setup, tmp_path):
    root, _ = setup
    settings = {
        "lora.r": 4, "train.steps": 2, "optim.lr": "1e-2", "train.checkpoint_every": 1,
        "ppo.safety_reward_model": root / "rm",  # R_c's safety branch, with the same scores
    }  # fmt: skip
    out = tmp_path / "lora"
    runner = _runner(root, out, **settings)
    assert runner.reference_model is None  # no second copy: the adapters are switched off
    runner.fit(show_progress=False)
    lines = _metrics(out)
    assert lines[0]["kl"] == 0.0 and lines[1]["kl"] != 0.0
    assert lines[0]["reward_helpful"] == lines[0]["reward_safety"] == lines[0]["reward"]
    ckpt = out / "checkpoints" / "step-00000002"
    assert (ckpt / "adapter_model.safetensors").is_file()
    assert not (ckpt / "model.safetensors").exists()
    herd.load(ckpt)  # the base named in adapter_config.json, merged
    # the adapters and their optimizer state come back on resume
    cut = tmp_path / "lora-cut"
    _runner(root, cut, **settings).fit(show_progress=False, stop_at=1)
    _runner(root, cut, resume=True, **settings).fit(show_progress=False)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]

    assert strip(_metrics(cut)) == strip(lines)


def test_ppo_raises_the_reward(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "learn"
    overrides = {
        "train.steps": 8, "optim.lr": "1e-2", "ppo.batch_size": 16, "ppo.mini_batch_size": 8,
        "ppo.max_new_tokens": 8, "ppo.ppo_epochs": 2, "train.checkpoint_every": 100,
    }  # fmt: skip
    _runner(root, out, **overrides).fit(show_progress=False)
    lines = _metrics(out)
    # the mean score logit(R_c) (the reward model's own scale; R_c itself is a sigmoid of it)
    scores = [x["score"] for x in lines]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.1, scores
    assert lines[-1]["kl"] > lines[1]["kl"]  # paid for by moving away from the reference


def test_cli_runs_and_bad_input_is_one_line(setup, tmp_path):
    root, _ = setup
    config = tmp_path / "ppo.toml"
    args = [
        f"--{k}={v}" for k, v in _overrides(root, tmp_path / "cli", **{"train.steps": 1}).items()
    ]
    proc = herd_cli("ppo", *args)
    # the file's values (under the overrides, so the test's batch sizes are left out)
    args = [a for a in args if "batch_size" not in a]
    assert "iteration 1, reward" in proc.stderr
    assert (tmp_path / "cli" / "checkpoints" / "step-00000001" / "value").is_dir()
    config.write_text("[ppo]\nbatch_size = 6\nmini_batch_size = 4\n")
    bad = [
        ((config, *args), "ppo.batch_size 6: expected a multiple of ppo.mini_batch_size 4"),
        ((*args, "--ppo.reward_model", root / "sft"), "needs a reward model"),
        ((*args, "--ppo.kl_estimator", "k2"), "ppo.kl_estimator 'k2': expected k1 or k3"),
        ((*args, "--ppo.temperature", "0"), "ppo.temperature 0.0: expected > 0"),
        ((*args, "--ppo.nope", "1"), "unknown key 'ppo.nope'"),
    ]
    for argv, message in bad:
        proc = herd_cli_inprocess("ppo", *argv, "--train.out", tmp_path / "bad", check=False)
        one_line_error(proc, message)
