"""Director: a classifier head beside the LM head that steers decoding away from bad replies.

Director (Arora et al. 2022, "Director: Generator-Classifier For Supervised Language Modeling"),
which BlenderBot 3x used to learn from its users' feedback, adds a linear layer from the
final-normed hidden state h_t to one logit per vocabulary token: sigmoid(c[t, v]) is the
probability that the sequence continued with token v at position t is good.

Training reads replies labelled good (1) or bad (0), here an agent reply's thumbs up or down. At
each position inside the reply the loss is the binary cross-entropy between the classifier logit
of the token actually taken next and the reply's label; positions outside the reply and every
other vocabulary entry get no loss (only what was said is judged).

Decoding scores every token v by

    log_softmax(lm)[v] + gamma * logsigmoid(c)[v]

(the paper's p_LM(v) * p_good(v)^gamma, in log space) and samples or argmaxes over that, with
temperature, top-k and top-p applied to the combined scores; gamma = 0 is plain decoding.

What herd does differently: the paper trains the decoder, its LM head and the classifier together
on one shared trunk. herd freezes the chat model and trains only the head, so a head is a small
folder beside an unchanged checkpoint, feedback cannot degrade the LM, and training is convex
(logistic regression on fixed features). herd's head has a zero-initialised weight and one learned
scalar bias (`DirectorHead` says why).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from herd.atomic_files import write_folder_atomically
from herd.errors import HerdError

WEIGHTS = "director.safetensors"
META = "director.json"
FORMAT = "herd-director"


@dataclass
class DirectorRow:
    """A reply `reply` the assistant gave after `messages` (chat messages ending with the turn
    it answered), labelled good (1, thumbs up) or bad (0, thumbs down)."""

    messages: list[dict]
    reply: str
    label: int


class DirectorHead(torch.nn.Module):
    """Linear(dim, vocab_size) without a per-token bias, plus one learned scalar bias; float32
    whatever the model's dtype, since its logits go through a sigmoid and a log.

    Zero-initialised weight: an untrained head gives every token the same logit (the bias), which
    shifts every score by one constant, so decoding with it is exactly plain decoding, and a
    token's row moves only once that token has been judged in training (Adam leaves rows without
    gradient at zero). The scalar bias learns the base rate of thumbs up, so the rows model what
    separates tokens rather than how often users are pleased."""

    def __init__(self, dim: int, vocab_size: int, device: torch.device | str | None = None):
        super().__init__()
        self.proj = torch.nn.Linear(dim, vocab_size, bias=False, device=device)
        self.bias = torch.nn.Parameter(torch.zeros((), device=device))
        torch.nn.init.zeros_(self.proj.weight)
        self.trained_rows = 0  # how many labelled rows trained it (recorded in director.json)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., vocab] of hidden states [..., dim]."""
        return self.proj(hidden.float()) + self.bias

    def taken(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logit of each token taken next, [N], from hidden [N, dim] and tokens [N]: one row
        of the weight per position instead of the whole [N, vocab] product."""
        return (hidden.float() * self.proj.weight[tokens]).sum(-1) + self.bias


@dataclass
class DirectorBatch:
    """Right-padded rows: ids [B, T]; targets [B, T], the token taken after each position;
    scored [B, T], True where that token belongs to the reply; labels [B] (float 0/1)."""

    ids: torch.Tensor
    targets: torch.Tensor
    scored: torch.Tensor
    labels: torch.Tensor


def reply_ids(tok, row: DirectorRow, index: int = 0) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of a row in the tokenizer's chat format: the prompt is what
    generation starts from (ending with the assistant's header), the reply its content and
    end-of-turn token, so prompt + reply is the conversation with the reply as its last turn."""
    from herd.tokenizer.chat import encode_dialog

    if row.label not in (0, 1) or not isinstance(row.reply, str):
        raise HerdError(f"director row {index}: expected label 0 or 1 and a string reply")
    if not isinstance(row.messages, list) or not row.messages:
        raise HerdError(f"director row {index}: 'messages' must be a non-empty list")
    try:
        prompt = encode_dialog(tok, row.messages, add_generation_prompt=True).ids
        reply = {"role": "assistant", "content": row.reply}
        full = encode_dialog(tok, [*row.messages, reply], add_generation_prompt=False).ids
    except HerdError as e:
        raise HerdError(f"director row {index}: {e}") from None
    if full[: len(prompt)] != prompt:  # a format whose reply re-tokenises its prompt's end
        raise HerdError(f"director row {index}: the chat format's prompt is not a prefix")
    return prompt, full[len(prompt) :]


def director_batch(
    tok, rows: Sequence[DirectorRow], max_len: int, offset: int = 0
) -> DirectorBatch:
    """Rows as one batch. A conversation longer than `max_len` loses its oldest prompt tokens
    (as chat context truncation does); the reply is always kept whole."""
    from herd.tokenizer.chat import conversation_pad_id

    seqs, starts = [], []
    for i, row in enumerate(rows, start=offset):
        prompt, reply = reply_ids(tok, row, i)
        if len(reply) + 1 > max_len:
            raise HerdError(
                f"director row {i}: its reply has {len(reply)} tokens; max_len {max_len} "
                "leaves no room for a prompt token before it"
            )
        prompt = prompt[max(0, len(prompt) + len(reply) - max_len) :]
        seqs.append(prompt + reply)
        starts.append(len(prompt))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), conversation_pad_id(tok), dtype=torch.long)
    scored = torch.zeros(len(seqs), width, dtype=torch.bool)
    for r, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[r, : len(seq)] = torch.tensor(seq)
        scored[r, start - 1 : len(seq) - 1] = True  # position t judges token t + 1
    targets = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)
    labels = torch.tensor([float(row.label) for row in rows])
    return DirectorBatch(ids, targets, scored, labels)


def _lm_config(model):
    """The model's config, refusing a reward model: Director reads the LM head's distribution."""
    config = model.config
    if config.head != "lm":
        raise HerdError(f"Director needs a language model (head 'lm'), not head {config.head!r}")
    return config


def _taken_logits(model, head: DirectorHead, batch: DirectorBatch) -> torch.Tensor:
    """Classifier logits [N] of the taken tokens at the batch's scored positions (row-major)."""
    device = head.bias.device
    with torch.no_grad():  # the LM is frozen: no graph through it, no gradient into it
        hidden = model(batch.ids.to(device), hidden=True)
    scored = batch.scored.to(device)
    return head.taken(hidden[scored], batch.targets.to(device)[scored])


def director_loss(model, head: DirectorHead, batch: DirectorBatch) -> torch.Tensor:
    """Mean binary cross-entropy over the batch's scored positions (each its row's label)."""
    labels = batch.labels[:, None].expand_as(batch.scored)[batch.scored]
    logits = _taken_logits(model, head, batch)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.device))


def _evaluate(model, head: DirectorHead, tok, rows, batch_size: int) -> tuple[list[float], float]:
    """Each row's goodness (mean sigmoid over its reply's taken tokens) and the mean loss over
    every scored position of `rows`, without gradients."""
    goodness: list[float] = []
    total, count, limit = 0.0, 0, model.config.max_seq_len
    for start in range(0, len(rows), batch_size):
        batch = director_batch(tok, rows[start : start + batch_size], limit, start)
        with torch.no_grad():
            logits = _taken_logits(model, head, batch).cpu()
        labels = batch.labels[:, None].expand_as(batch.scored)[batch.scored]
        total += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
        count += len(labels)
        per_row = torch.split(logits.sigmoid(), batch.scored.sum(1).tolist())
        goodness += [float(p.mean()) for p in per_row]
    return goodness, total / count


def sequence_goodness(model, head: DirectorHead, tok, rows, batch_size: int = 8) -> list[float]:
    """The classifier's view of each row's reply: the mean of sigmoid(logit of the token taken)
    over the reply's tokens, its end-of-turn token included (the row's label is not read)."""
    if not rows:
        return []
    return _evaluate(model, head, tok, rows, batch_size)[0]


def train_director(
    model, tok, rows: list[DirectorRow], *, steps: int = 200, lr: float = 1e-3,
    batch_size: int = 8, seed: int = 0, show_progress: bool = False,
) -> tuple[DirectorHead, dict]:  # fmt: skip
    """A head trained with Adam on minibatches of `rows` (shuffled each epoch), the model
    untouched. Metrics: `loss` and sequence-level `accuracy` (goodness > 0.5 against the label)
    over all of `rows` after training, and `train_loss`, the last minibatch's."""
    from tqdm import tqdm

    if not rows or steps < 1 or batch_size < 1:
        raise HerdError(f"{len(rows)} rows, steps {steps}, batch_size {batch_size}: expected >= 1")
    for i, row in enumerate(rows):
        reply_ids(tok, row, i)  # a malformed row fails now, not at some later step
    config = _lm_config(model)
    head = DirectorHead(config.dim, config.vocab_size, device=model.embed.weight.device)
    # Adam, no weight decay: a row that never gets a gradient stays exactly zero (see the head).
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in tqdm(range(steps), desc="director", disable=not show_progress):
        if len(order) < batch_size:
            order += torch.randperm(len(rows), generator=generator).tolist()
        chunk, order = order[:batch_size], order[batch_size:]
        batch = director_batch(tok, [rows[i] for i in chunk], config.max_seq_len)
        loss = director_loss(model, head, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    head.trained_rows = len(rows)
    goodness, final = _evaluate(model, head, tok, rows, batch_size)
    correct = sum((g > 0.5) == (r.label == 1) for g, r in zip(goodness, rows, strict=True))
    metrics = {"loss": final, "accuracy": correct / len(rows), "train_loss": loss.item()}
    return head, {**metrics, "steps": steps, "rows": len(rows)}


def _check_gamma(gamma: float) -> float:
    ok = isinstance(gamma, int | float) and not isinstance(gamma, bool) and math.isfinite(gamma)
    if not ok or gamma < 0:  # a negative gamma would favour the tokens rated bad
        raise HerdError(f"gamma {gamma!r}: expected a finite number >= 0")
    return float(gamma)


def director_scores(model, head: DirectorHead, hidden: torch.Tensor, gamma: float) -> torch.Tensor:
    """log_softmax(LM logits) + gamma * logsigmoid(classifier logits), [B, vocab] float32, from
    final-normed hidden states [B, dim]."""
    lm = F.log_softmax(model.output(hidden).float(), dim=-1)
    return lm + gamma * F.logsigmoid(head(hidden))


@torch.inference_mode()
def director_generate(
    model, head: DirectorHead, prompt_ids: list[int], *, gamma: float, max_new_tokens: int,
    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
    stop_ids: Sequence[int] = (),
) -> list[int]:  # fmt: skip
    """New ids after `prompt_ids` decoded by `director_scores`, ending with the first stop id
    (kept) or after `max_new_tokens`: one prefill into a KV cache, then one token per step.
    Eager and one row: each step reads its token back to test the stop ids, which costs nothing
    beside the model at the sizes a feedback-trained agent runs."""
    from herd.generation import sample
    from herd.model.cache import KVCache

    gamma = _check_gamma(gamma)
    config = _lm_config(model)
    n = len(prompt_ids)
    if n == 0 or max_new_tokens < 0 or n + max_new_tokens > config.max_seq_len:
        raise HerdError(
            f"prompt of {n} tokens + {max_new_tokens} new tokens: expected a non-empty prompt "
            f"and at most the model's context of {config.max_seq_len} tokens in all"
        )
    if min(prompt_ids) < 0 or max(prompt_ids) >= config.vocab_size:
        raise HerdError(f"prompt token ids must be in [0, {config.vocab_size})")
    device = model.embed.weight.device
    # Sized exactly, as herd.generate's eager path does, so gamma = 0 reproduces it bit for bit.
    cache = KVCache(config, 1, n + max_new_tokens, device, model.embed.weight.dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.tensor([list(prompt_ids)], device=device)
    last = torch.tensor([n - 1], device=device)
    hidden = model(prompt, torch.arange(n, device=device), cache, last=last, hidden=True)
    stop, out = set(stop_ids), []
    for step in range(max_new_tokens):
        scores = director_scores(model, head, hidden, gamma)
        token = sample(scores, temperature, top_k, top_p, generator)
        out.append(int(token[0]))
        if out[-1] in stop or step + 1 == max_new_tokens:
            break
        pos = torch.tensor([n + step], device=device)
        hidden = model(token[:, None], pos, cache, hidden=True)[:, -1]
    return out


def save_director(
    head: DirectorHead, out_dir: str | Path, *, base_checkpoint: str, gamma: float,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """out_dir/director.safetensors (the head) + director.json (what it fits and how to decode
    with it), written whole or not at all; returns out_dir."""
    from safetensors.torch import save_file

    base = Path(base_checkpoint)
    meta = {
        "format": FORMAT,
        "version": 1,
        "dim": head.proj.in_features,
        "vocab_size": head.proj.out_features,
        "gamma": _check_gamma(gamma),
        # absolute when it exists, so the folder reads the same from any working directory
        "base_checkpoint": str(base.resolve()) if base.exists() else str(base_checkpoint),
        "rows": head.trained_rows,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")

    return write_folder_atomically(Path(out_dir), fill, overwrite)


def load_director(path: str | Path, model) -> tuple[DirectorHead, dict]:
    """The head of a `save_director` folder on the model's device, and its director.json;
    HerdError when the folder is incomplete or the head does not fit `model`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise HerdError(f"{folder}: no such Director folder (expected {META} and {WEIGHTS})")
    for name in (META, WEIGHTS):
        if not (folder / name).is_file():
            raise HerdError(f"{folder}: no {name} (not a Director folder)")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{folder / META}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise HerdError(f"{folder / META}: expected a JSON object with format {FORMAT!r}")
    config = _lm_config(model)
    for field, want in (("dim", config.dim), ("vocab_size", config.vocab_size)):
        if meta.get(field) != want:
            raise HerdError(
                f"{folder / META}: the head has {field} {meta.get(field)!r}, the model has "
                f"{want}; train a head for this model"
            )
    try:
        tensors = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise HerdError(f"{folder / WEIGHTS}: not readable safetensors ({e})") from None
    head = DirectorHead(config.dim, config.vocab_size, device=model.embed.weight.device)
    try:
        head.load_state_dict(tensors)
    except RuntimeError as e:  # torch's message spans lines: keep its last
        last_line = str(e).strip().splitlines()[-1].strip()
        raise HerdError(f"{folder / WEIGHTS}: does not match {META} ({last_line})") from None
    head.trained_rows = int(meta.get("rows") or 0)
    return head, meta
