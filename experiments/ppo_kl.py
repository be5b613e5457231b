"""PPO at toy scale: does `herd ppo` raise the reward on held-out prompts while the KL penalty keeps
the policy near its reference, and does a run without the penalty drift further?

Llama 2 (section 3.2.3) maximises R̃_c − β·KL(π ‖ π_0) with β = 0.01: the penalty keeps the policy
where the reward model is reliable; without it the policy exploits the reward model (reward
hacking). This script checks that on a task whose reward is known by rule, through herd's own
`herd ppo` code (`PPORunner`):

- the reward model is a real score-head checkpoint whose weights are set by hand (as in
  tests/unit/test_ppo_run.py): a fixed, seeded half of the vocabulary is "good", and the score
  rises with the share of good tokens in the conversation. The rule is checkable directly: the
  share of good tokens among a response's tokens (`good_share`);
- the policy ("SFT" model) is a random dim-64, 2-layer model: its sampling distribution is broad,
  so drifting from it shows as falling entropy and repeated tokens;
- runs with β = 0 and larger β from the same start on the same training prompts, then every
  policy (and the start) sampled on held-out prompts (words never in a training prompt):
  mean reward R_c, mean score (logit R_c), KL to the reference (the k1 estimate summed over a
  response, averaged over samples), entropy per token, distinct-token share per response.

    .venv/bin/python experiments/ppo_kl.py            # about 12 minutes on 2 busy CPU cores
    .venv/bin/python experiments/ppo_kl.py --quick    # 3 iterations per run: a smoke test

The checkable goal: with β > 0 the held-out mean reward rises above the start's while the KL stays
bounded (below --kl-bound), and the β = 0 run ends with a larger KL than every β > 0 run.
Results: OUT/results.json and a table on stdout; measured: docs/post_training.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

WORDS = [
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "sun",
    "moon",
    "tree",
    "river",
    "stone",
    "apple",
    "bread",
    "fish",
    "bird",
    "rain",
    "snow",
    "hill",
    "lake",
    "road",
    "song",
]


def good_tokens(vocab_size: int):
    """u(t) = ±1: a fixed, seeded half of the vocabulary is good."""
    import torch

    return torch.randperm(vocab_size, generator=torch.Generator().manual_seed(7)) % 2 * 2.0 - 1


def rule_reward_model(config) -> dict:
    """The weights of a reward model (config.head "score") whose score is known by rule: it
    rises with the share of good tokens (`good_tokens`) in the conversation. u(t) sits in
    dimension 0 of each embedding; attention with zero queries and keys averages it over the
    conversation into dimension 1 (no embedding uses it), the MLPs add nothing, and the head
    reads dimension 1 after the final norm. tests/unit/test_ppo_run.py uses it too."""
    import torch

    import herd

    model = herd.build_model(config, seed=3)
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.05 * good_tokens(config.vocab_size)
        model.embed.weight[:, 1] = 0.0
        for block in model.layers:
            for w in (block.attn.wq, block.attn.wk, block.attn.wv, block.attn.wo, block.ffn.w2):
                w.weight.zero_()
            block.attn.wv.weight[0, 0] = 0.1
            block.attn.wo.weight[1, 0] = 0.05
        model.output.weight.zero_()
        model.output.weight[0, 1] = 4.0
    return model.state_dict()


def build(out: Path) -> tuple[Path, object, list[dict], list[dict]]:
    """Tokenizer, the start policy, the reward model and the train / held-out prompts."""

    import herd
    from herd.checkpoint.io import save_herd_folder
    from herd.vocab.bpe import train_bpe

    shape = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(f"{a} {b} {c}." for a in WORDS for b in WORDS for c in WORDS[:4]))
    tok_dir = out / "tok"
    if not tok_dir.exists():
        train_bpe([corpus], 300, tok_dir, show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    policy = herd.ModelConfig(vocab_size=tok.vocab_size, tie_embeddings=True, **shape)
    save_herd_folder(
        policy, herd.build_model(policy, seed=0).state_dict(), out / "sft", tok.files(), True
    )
    rm_config = herd.ModelConfig(vocab_size=tok.vocab_size, head="score", **shape)
    save_herd_folder(rm_config, rule_reward_model(rm_config), out / "rm", tok.files(), True)
    # held-out prompts name words that no training prompt names
    train = [{"prompt": f"say {a} {b}"} for a in WORDS[:10] for b in WORDS[:10] if a != b]
    held = [{"prompt": f"say {a} {b}"} for a in WORDS[10:] for b in WORDS[10:] if a != b]
    return out, tok, train, held


def write_prompts(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluate(runner, prompts: list[dict], samples: int, seed: int, reference: bool) -> dict:
    """Held-out measures of runner's policy (or, with `reference`, of the start itself)."""
    import torch

    from herd.generation import generate_batch
    from herd.posttrain.ppo import masked_entropy, masked_mean
    from herd.posttrain.ppo_rollout import (
        pack_responses,
        response_logits,
        reward_probabilities,
        token_logprobs,
    )
    from herd.tokenizer.chat import encode_dialog

    tok, good = runner.tokenizer, good_tokens(runner.tokenizer.vocab_size) > 0
    messages = [[{"role": "user", "content": p["prompt"]}] for p in prompts for _ in range(samples)]
    ids = [encode_dialog(tok, m, add_generation_prompt=True).ids for m in messages]
    runner.policy.eval()
    with torch.no_grad(), runner.reference() as ref:
        model = ref if reference else runner.policy
        responses = generate_batch(
            model, ids, runner.run.ppo.max_new_tokens, 1.0, seed=seed, stop_ids=runner.stop_ids
        )
        x, index, _, response, mask = pack_responses(ids, responses, runner.pad_id, "cpu")
        logits = response_logits(model, x, index, 1.0)
        logp = token_logprobs(logits, response)
        ref_logp = token_logprobs(response_logits(ref, x, index, 1.0), response)
        kl = ((logp - ref_logp) * mask).sum(1)
        entropy = masked_entropy(logits, mask)
    texts = [runner.response_text(r) for r in responses]
    reward = reward_probabilities(runner.helpful, messages, texts, 32)
    share = masked_mean(good[response].float(), mask)
    distinct = sum(len(set(r)) / len(r) for r in responses) / len(responses)
    return {
        "reward": reward.mean().item(),
        "score": torch.logit(reward.clamp(1e-6, 1 - 1e-6)).mean().item(),
        "good_share": share.item(),
        "kl": kl.mean().item(),
        "entropy": entropy.item(),
        "distinct_share": distinct,
        "length": float(mask.sum(1).float().mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ppo_kl", help="folder for the runs and results.json")
    p.add_argument("--betas", default="0,0.1,0.3", help="KL coefficients, comma-separated")
    p.add_argument("--iterations", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", default="1e-2")
    p.add_argument("--samples", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--kl-bound", type=float, default=10.0, help="the goal's bound on the KL")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 iterations: a smoke test")
    args = p.parse_args(argv)
    import torch

    from herd.posttrain.ppo_run import PPO_DEFAULTS, PPORunner
    from herd.train.config import load_run_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root, _, train, held = build(out)
    write_prompts(out / "train.jsonl", train)
    iterations = 3 if args.quick else args.iterations
    results: dict = {"settings": vars(args), "runs": {}}
    start = None
    for beta in [float(b) for b in args.betas.split(",")]:
        name = f"beta{beta:g}"
        overrides = {
            "model.checkpoint": root / "sft",
            "data.path": out / "train.jsonl",
            "ppo.reward_model": root / "rm",
            "ppo.batch_size": args.batch_size,
            "ppo.mini_batch_size": 8,
            "ppo.max_new_tokens": 12,
            "ppo.ppo_epochs": 2,
            "ppo.kl_coef": beta,
            "train.steps": iterations,
            "train.checkpoint_every": iterations,
            "train.device": "cpu",
            "train.out": out / name,
            "optim.lr": args.lr,
        }
        run = load_run_config(
            None, {k: str(v) for k, v in overrides.items()}, defaults=PPO_DEFAULTS
        )
        began = time.perf_counter()
        done = (out / name / "checkpoints").is_dir()
        runner = PPORunner(run, out / name, resume=done)
        runner.fit(show_progress=False)
        if start is None:
            start = evaluate(runner, held, args.samples, seed=1, reference=True)
            results["start"] = start
        lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        results["runs"][name] = {
            "beta": beta,
            "held_out": evaluate(runner, held, args.samples, seed=1, reference=False),
            "train_reward": [x["reward"] for x in lines],
            "train_kl": [x["kl"] for x in lines],
            "seconds": time.perf_counter() - began,
        }
    runs = results["runs"]
    bounded = [r for r in runs.values() if r["beta"] > 0]
    free = [r for r in runs.values() if r["beta"] == 0]
    results["goal"] = {
        "penalised_runs_raise_reward": all(
            r["held_out"]["reward"] > start["reward"] for r in bounded
        ),
        "penalised_runs_kl_bounded": all(r["held_out"]["kl"] < args.kl_bound for r in bounded),
        "unpenalised_run_drifts_further": bool(free)
        and all(f["held_out"]["kl"] > r["held_out"]["kl"] for f in free for r in bounded),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    cols = ("reward", "score", "good_share", "kl", "entropy", "distinct_share", "length")
    print("held-out prompts: " + " | ".join(cols), file=sys.stderr)
    print(f"{'start':>9}: " + " ".join(f"{start[c]:8.3f}" for c in cols), file=sys.stderr)
    for name, r in runs.items():
        print(f"{name:>9}: " + " ".join(f"{r['held_out'][c]:8.3f}" for c in cols), file=sys.stderr)
    print(f"goal: {results['goal']}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
