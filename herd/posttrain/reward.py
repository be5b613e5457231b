"""Reward models: the ranking loss with its margins, and scoring conversations with a score head.

A reward model (Llama 2 section 3.2.2) is the chat model with its next-token output layer replaced
by a scalar head (`ModelConfig.head = "score"`: `output` is Linear(dim, 1, bias=False)). The
score of a (prompt, response) is the head's value at the last token of the formatted conversation
(the response's end-of-turn token), as transformers' LlamaForSequenceClassification reads it at
the last non-pad token, so a herd reward model exported to Hugging Face scores the same
(herd/checkpoint/hf.py; tests/parity/test_reward_model_hf.py).

Training minimises the binary ranking loss over preference pairs (x, y_c, y_r):

    L = −log σ(r(x, y_c) − r(x, y_r) − m(rating))

with the margin m a function of how much better the annotators rated y_c. Llama 2 (Table 27)
gives two tables over its four ratings, and Llama 3 (section 4.1.2) drops the margin:

    rating (level)                    small   large
    significantly better (3)          1       3
    better (2)                        2/3     2
    slightly better (1)               1/3     1
    negligibly better / unsure (0)    0       0

`margin = "none"` gives 0 to every pair. A row's rating is one of those strings (case and the
separators " ", "_", "-" do not matter; "negligibly better", "unsure" and "negligibly better /
unsure" are all level 0) or its level as an integer 0-3. A row may instead carry an explicit
`margin` number, which is used as given whatever the table.

The functions others build on (best-of-n, PPO): `load_reward_model`, `conversation_ids` and
`score_sequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from herd.errors import HerdError

# Level -> the name Llama 2's annotators chose (level 3 is the strongest preference).
LEVELS = ("negligibly better / unsure", "slightly better", "better", "significantly better")
MARGINS = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (0.0, 1 / 3, 2 / 3, 1.0),  # Llama 2 Table 27, indexed by level
    "large": (0.0, 1.0, 2.0, 3.0),
}
_RATING_NAMES = {
    "negligibly better / unsure": 0,
    "negligibly better": 0,
    "unsure": 0,
    "slightly better": 1,
    "better": 2,
    "significantly better": 3,
}


def level_key(level: int | None) -> str:
    """A metric-name-safe key of a rating level: "significantly_better", ..., "unrated"."""
    if level is None:
        return "unrated"
    return LEVELS[level].split(" /")[0].replace(" ", "_")


def parse_rating(value: object) -> int:
    """The level (0-3) of a row's `rating`; ValueError naming what is accepted."""
    if isinstance(value, bool):
        pass  # true/false says nothing about how much better
    elif isinstance(value, int | float) and float(value) in (0.0, 1.0, 2.0, 3.0):
        return int(value)
    elif isinstance(value, str):
        name = " ".join(value.lower().replace("_", " ").replace("-", " ").split())
        name = name.replace(" / ", "/").replace("/", " / ")
        if name in _RATING_NAMES:
            return _RATING_NAMES[name]
    raise ValueError(
        f"rating {value!r}: expected 'significantly better', 'better', 'slightly better', "
        "'negligibly better / unsure' (or 'unsure'), or the level 3, 2, 1 or 0"
    )


def check_margin_table(name: str) -> tuple[float, ...]:
    if name not in MARGINS:
        raise HerdError(f"rm.margin '{name}': expected none, small or large")
    return MARGINS[name]


def pair_margin(level: int | None, explicit: float | None, table: str) -> float:
    """The margin of one pair: its explicit `margin`, else the table's value at its rating
    (a pair without a rating has none: 0)."""
    if explicit is not None:
        return float(explicit)
    return 0.0 if level is None else check_margin_table(table)[level]


def ranking_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over pairs of −log σ(r_c − r_r − m), and the batch's metrics.

    chosen, rejected, margin [B] (float). Metrics, detached 0-dim tensors named as DPO's so one
    plot serves both (herd/train/plots.py): rewards/chosen and rewards/rejected (mean scores),
    rewards/margins (mean r_c − r_r) and rewards/accuracies (share of pairs with r_c > r_r).
    """
    difference = chosen.float() - rejected.float()
    shifted = difference if margin is None else difference - margin.to(difference)
    # −log σ(x) via logsigmoid: exact where log(sigmoid(x)) underflows
    loss = -F.logsigmoid(shifted).mean()
    d = difference.detach()
    metrics = {
        "rewards/chosen": chosen.detach().float().mean(),
        "rewards/rejected": rejected.detach().float().mean(),
        "rewards/margins": d.mean(),
        "rewards/accuracies": (d > 0).float().mean(),
    }
    return loss, metrics


# --- scoring -----------------------------------------------------------------------------------


def sequence_scores(model, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Scores [B] (float32) of right-padded rows `ids` [B, T] whose real lengths are `lengths`
    [B]: the head's value at each row's last real token (causal attention: the padding after it
    changes nothing)."""
    config = getattr(model, "config", None)  # a wrapper (a counting one, say) may hide it
    if config is not None and config.head != "score":
        raise HerdError("this checkpoint is a language model, not a reward model (head 'score')")
    return model(ids, last=lengths - 1).squeeze(-1).float()


def reward_pad_id(tok) -> int:
    """The right-padding id of scoring and training, also the HF export's pad_token_id (one that
    formatted conversations never contain: herd.tokenizer.chat.conversation_pad_id)."""
    from herd.tokenizer.chat import conversation_pad_id

    return conversation_pad_id(tok)


@torch.no_grad()
def last_position_values(
    model, token_ids: Sequence[Sequence[int]], read, batch_size: int = 8, pad_id: int = 0
) -> list:
    """`read(model, ids [B, T], lengths [B])` (a list of B values, from each row's last real
    position) for every token sequence, in order, without gradients. Sequences are batched by
    length (fewer pad positions) and right-padded with `pad_id`, which changes nothing at a
    row's last real token (causal attention): one forward per batch. Reward scores and a guard's
    unsafe probability both come out this way."""
    if batch_size < 1:
        raise HerdError(f"batch_size {batch_size}: expected a positive integer")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    for i, t in enumerate(token_ids):
        if len(t) == 0:
            raise HerdError(f"sequence {i} is empty (no last token to read)")
        if limit is not None and len(t) > limit:
            raise HerdError(
                f"sequence {i} has {len(t)} tokens, more than the model's context {limit}"
            )
    device = next(model.parameters()).device
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    out: list = [None] * len(token_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, : len(token_ids[i])] = torch.as_tensor(token_ids[i], dtype=torch.long)
        lengths = torch.tensor([len(token_ids[i]) for i in chunk], device=device)
        for i, value in zip(chunk, read(model, ids.to(device), lengths), strict=True):
            out[i] = value
    return out


def score_sequences(
    model, token_ids: Sequence[Sequence[int]], batch_size: int = 8, pad_id: int = 0
) -> list[float]:
    """The reward of each token sequence (a formatted conversation, `conversation_ids`), in
    order (`last_position_values`; `reward_pad_id(tok)` is the pad id the HF export declares)."""

    def read(model, ids, lengths) -> list[float]:
        return sequence_scores(model, ids, lengths).tolist()

    return last_position_values(model, token_ids, read, batch_size, pad_id)


def conversation_ids(tok, prompt: str | list[dict], response: str | dict | list[dict]) -> list[int]:
    """Token ids of prompt + response in the tokenizer's chat format, as the reward model saw
    them in training: `prompt` a string (one user turn) or messages, `response` a string (one
    assistant turn), a message or messages ending with an assistant turn. ValueError on a
    malformed conversation (herd/data/chat_data.py's checks)."""
    from herd.data.chat_data import check_messages, require_chat_format
    from herd.tokenizer.chat import encode_dialog

    chat_format = require_chat_format(tok)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(response, str):
        response = [{"role": "assistant", "content": response}]
    elif isinstance(response, dict):
        response = [response]
    if not isinstance(prompt, list) or not isinstance(response, list):
        raise ValueError("'prompt' and 'response' must be strings or lists of messages")
    messages = check_messages(prompt + response, chat_format, "prompt + response")
    if messages[-1]["role"] != "assistant" or len(response) == 0:
        raise ValueError("the response must end with an assistant message")
    try:
        return encode_dialog(tok, messages, add_generation_prompt=False).ids
    except HerdError as e:
        raise ValueError(str(e)) from None


def load_reward_model(
    path: str | Path, device: str | torch.device | None = None, dtype: str | None = None
):
    """(model, tokenizer) of a reward-model checkpoint (a herd folder, or an HF
    LlamaForSequenceClassification folder), in eval mode on `device` (default: CUDA if present)."""
    from herd.checkpoint.loading import load_for_command

    device = None if device is None else str(device)
    needed = "to format conversations for scoring"
    model, tok, _ = load_for_command(path, device, dtype, needed, head="score")
    return model, tok
