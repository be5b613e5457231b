"""`herd ppo CONFIG.toml`: RLHF with PPO against reward models (Llama 2 §3.2.3).

Each iteration samples `ppo.batch_size` responses to prompts of [data] path from the policy
([model] checkpoint, the SFT model), scores them (herd/posttrain/ppo_rollout.py), turns the
scores into per-token rewards (R̃_c = whiten(logit(R_c)) at the last token, −β·KL(π ‖ π_0) at
every token), estimates advantages and returns by GAE, and takes one policy step and one value
step per mini-batch of `ppo.mini_batch_size` responses, for `ppo.ppo_epochs` shuffled passes
(herd/posttrain/ppo.py holds every formula). train.steps is the number of iterations.

Models: the reference π_0 is a frozen copy of the starting policy, or with [lora] r > 0 the
policy itself with its adapters disabled (no second copy); the value model is a copy of the
(helpfulness) reward model, trunk and score head, trained with its own AdamW (Llama 2 starts it
from the reward model: its first estimates are already the expected score). The reward models
are frozen and score in their own tokenizers' chat formats; the value model reads the policy's
tokens, so its tokenizer must be the policy's.

The run folder is the trainer's (herd/train/trainer.py): config.toml, metrics.jsonl (one line per
iteration), events.jsonl, plots/ppo.png, and checkpoints/step-N: the policy as a herd folder
(`herd generate`/`herd serve` load it; the adapters alone in PEFT's layout with LoRA), value/
(the value model, a reward-model herd folder), and train_state/ (both optimizers' moments, RNG,
the iteration and prompt cursor). Prompts are visited in a fresh shuffle per pass, sampling uses
the seed `train.seed` and the iteration, and the mini-batch shuffle likewise, so on CPU a run
resumed from a checkpoint logs what the uninterrupted run logs.

Single process: the rollout's generation and the four models' forwards are not sharded.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from herd.errors import HerdError
from herd.posttrain.ppo import (
    PPO_OPTIM_DEFAULTS,
    advantages_and_returns,
    combine_rewards,
    kl_penalised_rewards,
    logit,
    masked_entropy,
    policy_loss,
    shaped_scores,
    value_loss,
)
from herd.posttrain.ppo_rollout import (
    Rollout,
    pack_responses,
    response_logits,
    response_values,
    reward_probabilities,
    score_tokens,
    token_logprobs,
)
from herd.posttrain.ppo_value import ValueModel
from herd.train.config import RunConfig

PPO_DEFAULTS = {**PPO_OPTIM_DEFAULTS, "train.steps": "200", "train.checkpoint_every": "20"}
TIMING_FIELDS = ("tokens_per_s", "seconds")  # the metrics a resumed run cannot reproduce


class PPORunner:
    """The policy, reference, reward, value models and optimizers of a PPO run, and its loop."""

    def __init__(self, run: RunConfig, run_dir: Path, resume: bool = False) -> None:
        from herd.checkpoint.loading import load_weights
        from herd.data.chat_data import require_chat_format
        from herd.model.families import build_model
        from herd.model.lora import apply_lora
        from herd.posttrain.best_of_n import read_prompts
        from herd.posttrain.reward import load_reward_model
        from herd.posttrain.sft import start_tokenizer
        from herd.tokenizer.chat import encode_dialog
        from herd.train import distributed
        from herd.train.optim import build_optimizer
        from herd.train.runlog import RunLog

        self.run, self.run_dir, p = run, Path(run_dir), run.ppo
        p.check()
        if p.batch_size < 2:
            raise HerdError("ppo.batch_size 1: whitening the scores needs at least 2 responses")
        if distributed.world()[1] > 1:
            raise HerdError("herd ppo runs in one process (launch it without torchrun)")
        if not resume and any((self.run_dir / "checkpoints").glob("step-*")):
            raise HerdError(f"{self.run_dir}: holds checkpoints; resume with --resume")
        if not p.reward_model:
            raise HerdError("ppo.reward_model is empty: point it at a `herd rm` checkpoint")
        t = run.train
        _, _, self.device, _ = distributed.place(t.device, 1)
        self.amp = {"auto": self.device.type == "cuda", "bfloat16": True, "float32": False}.get(
            t.dtype
        )
        if self.amp is None:
            raise HerdError(f"train.dtype '{t.dtype}': expected auto, bfloat16 or float32")
        self.tokenizer = start_tokenizer(run, "PPO's prompts")
        chat_format = require_chat_format(self.tokenizer)
        self.model_config = run.model_config(vocab_size=self.tokenizer.vocab_size)
        if self.model_config.head == "score":
            raise HerdError(
                f"{run.init_checkpoint}: a reward model; the policy is a language model"
            )
        self.prompts, dropped = [], 0
        for row in read_prompts(run.data.path, chat_format, run.data.split):
            ids = encode_dialog(self.tokenizer, row["messages"], add_generation_prompt=True).ids
            if len(ids) + p.max_new_tokens < self.model_config.max_seq_len:
                self.prompts.append({**row, "ids": ids})
            else:
                dropped += 1
        if dropped:
            print(
                f"ppo: {dropped} prompts too long for ppo.max_new_tokens {p.max_new_tokens} in the "
                f"context of {self.model_config.max_seq_len} left out",
                file=sys.stderr,
            )
        if not self.prompts:
            raise HerdError(
                f"{run.data.path}: no prompt leaves room for ppo.max_new_tokens {p.max_new_tokens} "
                f"in the model's context of {self.model_config.max_seq_len}"
            )

        self.policy = build_model(self.model_config, self.device, torch.float32, t.seed)
        load_weights(self.policy, run.init_checkpoint)
        self.lora = run.lora.lora_config()
        if self.lora is not None:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(t.seed)  # A's start from the run's seed, as the trainer's
                apply_lora(self.policy, self.lora)
            self.reference_model = None
        else:
            self.reference_model = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.helpful = load_reward_model(p.reward_model, self.device, "float32")
        self.safety = None
        if p.safety_reward_model:
            self.safety = load_reward_model(p.safety_reward_model, self.device, "float32")
        for model, _ in filter(None, (self.helpful, self.safety)):
            model.requires_grad_(False)
        rm_tok = self.helpful[1]
        if rm_tok.vocab_size != self.tokenizer.vocab_size or list(rm_tok.token_bytes) != list(
            self.tokenizer.token_bytes
        ):
            raise HerdError(
                f"ppo.reward_model {p.reward_model}: its tokenizer differs from the policy's; "
                "the value model starts from it and must read the policy's tokens"
            )
        trunk, _ = load_reward_model(p.reward_model, self.device, "float32")
        self.value = ValueModel(trunk, trunk.output).train()
        self.policy_optim = build_optimizer(self.policy, run.optim)
        self.value_optim_config = dataclasses.replace(run.optim, lr=p.value_lr or run.optim.lr)
        self.value_optim = build_optimizer(self.value, self.value_optim_config)
        self.stop_ids = sorted(set(self.tokenizer.stop_ids))
        self.pad_id = next(
            (i for i in (self.tokenizer.pad_id, self.tokenizer.eos_id) if i is not None), 0
        )
        self.step, self.tokens = 0, 0
        self._orders: dict[int, list[int]] = {}
        self.log = RunLog(self.run_dir)
        self._prepare_run_dir(resume)

    # --- models and data ---------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def reference(self):
        """A context giving π_0: the frozen copy, or the policy with its adapters off."""
        from herd.model.lora import adapters_disabled

        if self.reference_model is not None:
            return nullcontext(self.reference_model)
        return adapters_disabled(self.policy)

    def prompt_indices(self, step: int) -> list[int]:
        """The prompts of iteration `step` (0-based): consecutive positions of a sequence that
        visits every prompt once per pass, in a shuffle of its own per pass (seeded), so the
        cursor is the iteration itself."""
        n, size = len(self.prompts), self.run.ppo.batch_size
        out = []
        for g in range(step * size, (step + 1) * size):
            npass, i = divmod(g, n)
            if npass not in self._orders:
                gen = torch.Generator().manual_seed(self.run.train.seed * 1_000_003 + npass)
                self._orders[npass] = torch.randperm(n, generator=gen).tolist()
            out.append(self._orders[npass][i])
        return out

    def response_text(self, tokens: list[int]) -> str:
        """A sampled response as the reward models read it: up to its stop id, no specials."""
        stop = set(self.stop_ids)
        end = next((i for i, x in enumerate(tokens) if x in stop), len(tokens))
        return self.tokenizer.decode(tokens[:end], skip_special=True).strip()

    # --- one iteration ---------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self) -> tuple[Rollout, dict]:
        """Sample this iteration's responses and compute everything the updates read, with the
        rollout's metrics (host floats)."""
        from herd.generation import generate_batch

        p = self.run.ppo
        prompts = [self.prompts[i] for i in self.prompt_indices(self.step)]
        self.policy.eval()  # no LoRA dropout while sampling and scoring: π_old is one function
        self.value.eval()
        with self._autocast():
            responses = generate_batch(
                self.policy,
                [x["ids"] for x in prompts],
                p.max_new_tokens,
                temperature=p.temperature,
                seed=self.run.train.seed * 1_000_003 + self.step,
                stop_ids=self.stop_ids,
            )
            ids, index, lengths, response, mask = pack_responses(
                [x["ids"] for x in prompts], responses, self.pad_id, self.device
            )
            logprobs, ref_logprobs, values = score_tokens(
                self.policy,
                self.reference,
                self.value,
                ids,
                index,
                response,
                p.temperature,
                p.mini_batch_size,
            )
        messages = [x["messages"] for x in prompts]
        texts = [self.response_text(r) for r in responses]
        helpful = reward_probabilities(self.helpful, messages, texts, p.mini_batch_size)
        safety = helpful  # without a safety model R_c is R_h whatever the prompt
        if self.safety is not None:
            safety = reward_probabilities(self.safety, messages, texts, p.mini_batch_size)
        is_safety = torch.tensor([x["safety"] for x in prompts])
        r_c = combine_rewards(helpful, safety, is_safety, p.safety_threshold)
        scores = shaped_scores(helpful, safety, is_safety, p.safety_threshold).to(self.device)
        token = kl_penalised_rewards(
            scores, logprobs, ref_logprobs, mask, p.kl_coef, p.kl_estimator
        )
        advantages, returns = advantages_and_returns(token.rewards, values, mask, p.gamma, p.lam)
        rollout = Rollout(
            ids, index, lengths, response, mask, logprobs, ref_logprobs, values,
            advantages, returns,
        )  # fmt: skip
        kl = token.kl.sum(1)  # the k-estimate of KL(π ‖ π_0) of each response
        n_tokens = int(mask.sum())
        metrics = {
            "reward": r_c.mean().item(),
            "score": logit(r_c).mean().item(),
            "kl": kl.mean().item(),
            "non_score_reward": -p.kl_coef * kl.mean().item(),
            "rlhf_reward": (scores - p.kl_coef * kl).mean().item(),
            "response_length": n_tokens / len(responses),
            "response_tokens": n_tokens,
        }
        if self.safety is not None:
            metrics["reward_helpful"] = helpful.mean().item()
            metrics["reward_safety"] = safety.mean().item()
        return rollout, metrics

    def update(self, rollout: Rollout) -> dict:
        """PPO's epochs over the rollout: per shuffled mini-batch one clipped policy step and one
        clipped value step; returns the means of their metrics."""
        from herd.train.optim import set_lr
        from herd.train.step import clip_gradients, guarded_update

        p, run = self.run.ppo, self.run
        set_lr(self.policy_optim, self.step, run.train.steps, run.optim)
        set_lr(self.value_optim, self.step, run.train.steps, self.value_optim_config)
        self.policy.train()
        self.value.train()
        size = rollout.ids.shape[0]
        gen = torch.Generator().manual_seed(run.train.seed * 1_000_003 + self.step)
        stats = []
        for _ in range(p.ppo_epochs):
            order = torch.randperm(size, generator=gen).to(self.device)
            for start in range(0, size, p.mini_batch_size):
                part = rollout.rows(order[start : start + p.mini_batch_size])
                with self._autocast():
                    logits = response_logits(self.policy, part.ids, part.index, p.temperature)
                    new = token_logprobs(logits, part.response)
                pl = policy_loss(new, part.logprobs, part.advantages, part.mask, p.clip)
                pl.loss.backward()
                norm = clip_gradients(self.policy, run.optim.grad_clip)
                # a non-finite gradient skips the step on the device, as in the trainer
                guarded_update(self.policy_optim, (~torch.isfinite(norm)).float())
                self.policy_optim.zero_grad(set_to_none=True)
                entropy = masked_entropy(logits.detach(), part.mask)
                with self._autocast():
                    values = response_values(self.value, part.ids, part.index)
                vl = value_loss(values, part.values, part.returns, part.mask, p.cliprange_value)
                vl.loss.backward()
                value_norm = clip_gradients(self.value, run.optim.grad_clip)
                guarded_update(self.value_optim, (~torch.isfinite(value_norm)).float())
                self.value_optim.zero_grad(set_to_none=True)
                row = [pl.loss.detach(), pl.clip_fraction, pl.approx_kl, vl.loss.detach()]
                row += [vl.clip_fraction, entropy, norm.float()]
                stats.append(torch.stack(row).double())
        names = ("policy_loss", "clip_fraction", "approx_kl", "value_loss")
        names += ("value_clip_fraction", "entropy", "grad_norm")
        means = torch.stack(stats).mean(0).tolist()  # the one host read of the updates
        return dict(zip(names, means, strict=True))

    def iteration(self) -> dict:
        """One rollout and its updates; returns (and logs) the iteration's metrics line."""
        began = time.perf_counter()
        rollout, metrics = self.rollout()
        metrics.update(self.update(rollout))
        self.step += 1
        self.tokens += metrics["response_tokens"]
        seconds = time.perf_counter() - began
        line = {
            "step": self.step,
            "episodes": self.step * self.run.ppo.batch_size,
            "tokens": self.tokens,
            **metrics,
            "lr": self.policy_optim.param_groups[0]["lr"],
            "tokens_per_s": metrics["response_tokens"] / max(seconds, 1e-9),
            "seconds": seconds,
        }
        self.log.metric(line)
        return line

    def fit(self, show_progress: bool = True, stop_at: int | None = None) -> dict:
        """Run to train.steps iterations (or stop after iteration `stop_at`, as an interrupted
        run would), checkpointing every train.checkpoint_every; returns the last metrics."""
        from herd.train.plots import plot_run

        t = self.run.train
        last = self.log.metrics_at(self.step)
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            desc="ppo",
            unit="iter",
            disable=not show_progress or None,
        )
        try:
            while self.step < t.steps:
                last = self.iteration()
                bar.update(1)
                bar.set_postfix(reward=f"{last['reward']:.3f}", kl=f"{last['kl']:.3f}")
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.save_checkpoint()
                if stop_at is not None and self.step >= stop_at:
                    return last
        finally:
            bar.close()
        plot_run(self.run_dir)
        return last

    # --- run folder, checkpoints and resume ------------------------------------------------------

    def _prepare_run_dir(self, resume: bool) -> None:
        from herd.posttrain.ppo_checkpoint import prepare_run_dir

        prepare_run_dir(self, resume)

    def save_checkpoint(self) -> Path:
        """checkpoints/step-N: the policy (or its adapters), value/, and train_state/."""
        from herd.posttrain.ppo_checkpoint import save_ppo_checkpoint

        path = save_ppo_checkpoint(self)
        self.log.event(self.step, "checkpoint", path=str(path))
        return path


def run_ppo(args: argparse.Namespace) -> None:
    """`herd ppo CONFIG.toml [--SECTION.FIELD VALUE ...]` or `herd ppo --resume RUN_DIR`."""
    from herd.posttrain.sft import load_stage_config
    from herd.train.commands import run_from_args

    run, run_dir, resume = run_from_args(
        args, lambda path, overrides: load_stage_config(path, overrides, PPO_DEFAULTS)
    )
    runner = PPORunner(run, run_dir, resume=resume)
    last = runner.fit()
    if last:
        print(
            f"{run_dir}: iteration {runner.step}, reward {last['reward']:.4f}, "
            f"KL {last['kl']:.4f}, response length {last['response_length']:.1f}",
            file=sys.stderr,
        )


__all__ = ["PPO_DEFAULTS", "PPORunner", "run_ppo"]
