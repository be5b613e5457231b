"""A guard: a Llama Guard 3 style model that scores and labels conversations.

The unsafe score is, as for the released models, the probability the guard gives "unsafe" as its
first answer token (herd/guard/prompt.py: the prompt ends where the answer starts), read from one
forward pass over the prompt: batches of conversations need no generation for their scores. A
conversation is unsafe when that probability reaches the threshold (0.5 by default, or one picked
for a target false-positive rate by `herd guard eval`). Only then are the violated categories
generated: greedily, after "unsafe" is put in the guard's mouth, so the categories always belong
to the threshold's verdict even when the guard on its own would have answered "safe".

Works on any herd-loadable checkpoint with a Llama 3 chat tokenizer: a converted Hugging Face
Llama Guard 3 (1B or 8B) or a guard trained with `herd guard train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.guard.policy import Policy, default_policy
from herd.guard.prompt import ROLE_NAMES, guard_task, parse_verdict

CATEGORY_TOKENS = 24  # enough for "\n" and a dozen codes


@dataclass(frozen=True)
class GuardResult:
    label: str  # "safe" or "unsafe", by the threshold
    unsafe_probability: float
    categories: tuple[str, ...]  # the violated codes (empty when safe)
    role: str  # "User" or "Agent": whose message was assessed
    answer: str = ""  # the generated category line ("" when safe)

    def to_dict(self) -> dict:
        return {**asdict(self), "categories": list(self.categories)}


class Guard:
    """A guard model, its tokenizer, a policy and a threshold."""

    def __init__(
        self, model, tokenizer, policy: Policy | None = None, threshold: float = 0.5, batch_size=8
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise HerdError(f"threshold {threshold}: expected a probability in [0, 1]")
        if tokenizer.chat_format != "llama3":
            raise HerdError(
                f"{tokenizer.path}: chat format {tokenizer.chat_format!r}; a Llama Guard 3 "
                "prompt is a Llama 3 user turn"
            )
        self.model, self.tokenizer = model, tokenizer
        self.policy = policy or default_policy()
        self.threshold, self.batch_size = threshold, batch_size
        unsafe, safe = tokenizer.encode("unsafe"), tokenizer.encode("safe")
        if unsafe[0] == safe[0]:
            raise HerdError(f"{tokenizer.path}: 'safe' and 'unsafe' start with the same token")
        self.unsafe_ids = unsafe

    @classmethod
    def load(
        cls, path: str | Path, policy: Policy | None = None, threshold: float = 0.5,
        device: str | None = None, dtype: str | None = None, batch_size: int = 8,
    ) -> Guard:  # fmt: skip
        """The guard at `path` (any folder herd loads) on `device` (default: CUDA if present)."""
        from herd.checkpoint.loading import load_for_command

        model, tok, _ = load_for_command(path, device, dtype, "for the guard's chat prompt")
        return cls(model.eval(), tok, policy, threshold, batch_size)

    def prompt_ids(self, messages: list[dict], policy: Policy | None = None) -> list[int]:
        task = guard_task(messages, policy or self.policy)
        return self.tokenizer.encode_dialog([{"role": "user", "content": task}]).ids

    def _encode_all(self, conversations: list[list[dict]]) -> list[list[int]]:
        limit = self.model.config.max_seq_len
        out = []
        for i, messages in enumerate(conversations):
            ids = self.prompt_ids(messages)
            if len(ids) > limit:
                raise HerdError(
                    f"conversation {i}: its guard prompt has {len(ids)} tokens, more than the "
                    f"model's context {limit}"
                )
            out.append(ids)
        return out

    def unsafe_probabilities(self, conversations: list[list[dict]]) -> list[float]:
        """P(first answer token = "unsafe") for each conversation: one forward per batch
        (`last_position_values`: prompts sorted by length and right-padded)."""
        from herd.posttrain.reward import last_position_values
        from herd.tokenizer.chat import conversation_pad_id

        unsafe = self.unsafe_ids[0]

        def read(model, ids, lengths) -> list[float]:
            logits = model(ids, last=lengths - 1).float()
            return torch.softmax(logits, dim=-1)[:, unsafe].tolist()

        prompts = self._encode_all(conversations)
        pad = conversation_pad_id(self.tokenizer)
        with torch.inference_mode():
            return last_position_values(self.model, prompts, read, self.batch_size, pad)

    def _categories(self, prompts: list[list[int]]) -> list[tuple[tuple[str, ...], str]]:
        """Greedy category lines after a forced "unsafe" (codes outside the policy dropped)."""
        from herd.generation import generate_batch

        if not prompts:
            return []
        forced = [p + self.unsafe_ids for p in prompts]
        room = self.model.config.max_seq_len - 1 - max(len(p) for p in forced)
        if room < 2:
            return [((), "")] * len(prompts)
        tok = self.tokenizer
        new = generate_batch(self.model, forced, min(CATEGORY_TOKENS, room), stop_ids=tok.stop_ids)
        out = []
        for ids in new:
            text = tok.decode([t for t in ids if t not in tok.stop_ids], skip_special=True)
            verdict = parse_verdict("unsafe" + text)
            codes = tuple(c for c in verdict.categories if c in self.policy.codes)
            out.append((codes, text.strip()))
        return out

    def classify(
        self,
        conversations: list[list[dict]],
        categories: bool = True,
        probabilities: list[float] | None = None,
    ) -> list[GuardResult]:
        """Each conversation's verdict (assessing its last message), unsafe probability and,
        when unsafe and `categories`, the violated categories. `probabilities`, when the caller
        already has them (`unsafe_probabilities`), spare the forward passes."""
        probs = probabilities
        if probs is None:
            probs = self.unsafe_probabilities(conversations)
        elif len(probs) != len(conversations):
            raise HerdError(f"{len(probs)} probabilities for {len(conversations)} conversations")
        unsafe = [i for i, p in enumerate(probs) if p >= self.threshold]
        found = {}
        if categories and unsafe:
            lines = self._categories(self._encode_all([conversations[i] for i in unsafe]))
            found = dict(zip(unsafe, lines, strict=True))
        results = []
        for i, (messages, p) in enumerate(zip(conversations, probs, strict=True)):
            codes, answer = found.get(i, ((), ""))
            role = ROLE_NAMES[messages[-1]["role"]]
            label = "unsafe" if p >= self.threshold else "safe"
            results.append(GuardResult(label, p, codes, role, answer))
        return results

    def check(self, messages: list[dict]) -> GuardResult:
        return self.classify([messages])[0]


def guard_view(messages: list[dict]) -> list[dict]:
    """The user/assistant turns of a chat, as a guard reads them: system and tool messages left
    out, consecutive turns of one role (an assistant's tool call and its answer) joined by a
    blank line, and a leading assistant turn dropped (the template starts with the user)."""
    turns: list[dict] = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ROLE_NAMES or not isinstance(content, str) or not content.strip():
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + content}
        else:
            turns.append({"role": role, "content": content})
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    return turns
