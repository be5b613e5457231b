"""lm-evaluation-harness bridge: herd models as an lm-eval model named "herd".

Importing this module registers `HerdLM` in lm-eval's model registry, after which every lm-eval
task runs on a herd checkpoint (herd, HF, Meta or llama2.c):

    herd lm-eval --model herd --model_args checkpoint=runs/x/checkpoints/step-00001000 \\
        --tasks belebele_eng_Latn,hellaswag --batch_size 8

`herd lm-eval` is lm-eval's own command line (same options) with this module imported first;
lm-eval 0.4 discovers models only through its registry, not through package entry points, so the
bare `lm_eval` command cannot see a third-party model. From Python:
`import herd.eval.lm_eval_backend` then `lm_eval.simple_evaluate(model="herd", ...)`.

Model args (`--model_args k=v,...`): checkpoint (required), device, dtype, batch_size,
max_batch_size, add_bos_token, max_gen_toks; trust_remote_code is accepted and ignored (lm-eval's
`--trust_remote_code` adds it; herd runs no remote code). Anything else is a `HerdError` naming the
closest valid name. lm-eval's own `--device`, `--batch_size` and `--max_batch_size` reach the
model too; where both give one, the model arg wins, because lm-eval always passes its defaults
(device cuda:0, batch_size 1) and a default cannot be told apart from a typed option.

Device: a CUDA device that is absent (no CUDA, or cuda:3 on a two-GPU machine) falls back to cuda
or, without CUDA, to cpu, with a warning, as lm-eval's HF model does.

Batch size: an integer, `auto` or `auto:N`. It sizes the batches of single-token loglikelihood
requests (multiple-choice letters), which run as right-padded batches of contexts; longer
continuations share one cached prefix per context (herd.eval.scoring) and rolling windows and
generation run one sequence at a time, so the batch size does not apply to them. `auto` finds
the largest batch that fits, as lm-eval's HF model does: accelerate's find_executable_batch_size
runs the longest context at max_batch_size (default 64) and shrinks by 10% on each out-of-memory
error. `auto:N` re-detects N times as the (longest-first) requests get shorter. On CPU, where
running out of memory means being killed rather than an exception, `auto` picks the largest batch
of at most CPU_TOKENS_PER_BATCH tokens (and max_batch_size): CPU matrix products reach their
speed well below that size, and memory grows with batch x length.

Requests are tokenised exactly as lm-eval's TemplateLM does: all trailing whitespace of a context
(spaces, newlines, tabs: `str.rstrip()`) moves to the continuation, the pair is encoded whole and
split where the context's own encoding ends. Loglikelihood requests that share a context (the
choices of one question) are scored together from one KV-cached prefix. `loglikelihood_rolling`
uses lm-eval's rolling windows after one BOS; `generate_until` samples (greedy unless `do_sample`
or a temperature) until a stop string, a stop token or `max_gen_toks`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import lm_eval.models  # noqa: F401 - fills lm-eval's registry first: registering into an empty
from lm_eval.api.model import LM  # one would hide the built-in models (lm-eval 0.4.13)
from lm_eval.api.registry import register_model
from lm_eval.utils import simple_parse_args_string

from herd.errors import HerdError
from herd.eval.scoring import (
    Request,
    encode_pair,
    rolling_nll,
    score_requests,
    truncate_left,
)

# A child of lm-eval's logger, so messages show in `herd lm-eval`'s output next to lm-eval's own
# (lm-eval configures the "lm_eval" logger and stops it propagating to the root).
log = logging.getLogger("lm_eval.models.herd")

MODEL_ARGS = (
    "checkpoint",
    "device",
    "dtype",
    "batch_size",
    "max_batch_size",
    "add_bos_token",
    "max_gen_toks",
    "trust_remote_code",
)
DEFAULT_MAX_BATCH_SIZE = 64  # lm-eval's HF model starts its search here too
CPU_TOKENS_PER_BATCH = 2048


def merge_model_args(model_args: dict, lm_eval_options: dict | None) -> dict:
    """One set of constructor arguments from `--model_args` and lm-eval's own options.

    lm-eval's `create_from_arg_*` calls `cls(**model_args, **options)`, a TypeError when both
    name one key (`device=cpu` in model args, lm-eval's default `device="cuda:0"`). Options that
    are None are unset (lm-eval drops them too); for a key given both ways the model arg wins.
    """
    unknown = [k for k in model_args if k not in MODEL_ARGS]
    if unknown:
        name = unknown[0]
        closest = difflib.get_close_matches(name, MODEL_ARGS, n=1, cutoff=0.0)[0]
        raise HerdError(
            f"model_args: unknown argument '{name}' (did you mean '{closest}'?); the herd model "
            f"takes {', '.join(MODEL_ARGS)}"
        )
    merged = {k: v for k, v in (lm_eval_options or {}).items() if v is not None}
    for key, value in model_args.items():
        if key in merged and merged[key] != value:
            log.info("model_args %s=%s overrides lm-eval's %s=%s", key, value, key, merged[key])
        merged[key] = value
    return merged


def resolve_device(requested: str | None):
    """The torch device to load on: `requested`, unless it names CUDA that is not there."""
    import torch

    fallback = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested is None or str(requested) == "":
        return fallback
    try:
        device = torch.device(str(requested))
    except RuntimeError:
        raise HerdError(
            f"device '{requested}': not a torch device (cpu, cuda, cuda:1 ...)"
        ) from None
    if device.type == "cuda":
        present = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= present:
            # lm-eval's CLI passes device="cuda:0" unless told otherwise; its HF model then uses
            # cuda if there is any, else cpu (lm_eval/models/huggingface.py, single-device case)
            log.warning(
                "device '%s' is not available (%d CUDA devices); using %s",
                requested,
                present,
                fallback,
            )
            return fallback
    return device


def parse_batch_size(value) -> tuple[int | None, int]:
    """(fixed batch size, or None for auto; how many times auto re-detects)."""
    text = str(value).strip()
    if text == "auto" or text.startswith("auto:"):
        times = text.removeprefix("auto").removeprefix(":") or "1"
        if not times.isdigit() or int(times) < 1:
            raise HerdError(f"batch_size '{value}': expected auto:N with N a positive integer")
        return None, int(times)
    if not text.isdigit() or int(text) < 1:
        raise HerdError(f"batch_size '{value}': expected a positive integer, 'auto' or 'auto:N'")
    return int(text), 1


def probe_batch_size(model, length: int, ceiling: int) -> int:
    """The largest batch of `length`-token contexts that runs on the model's device, searched
    as lm-eval's HF model does: accelerate's find_executable_batch_size from `ceiling`, 10% less
    after each out-of-memory error, 1 when nothing fits."""
    import torch
    from accelerate.utils import find_executable_batch_size

    device = model.embed.weight.device

    @find_executable_batch_size(starting_batch_size=ceiling)
    def run(batch_size: int) -> int:
        # the call herd.eval.scoring makes for a batch of single-token requests
        tokens = torch.zeros(batch_size, length, dtype=torch.long, device=device)
        last = torch.full((batch_size,), length - 1, device=device)
        for _ in range(2):  # the second pass meets the allocator as the real batches will
            torch.log_softmax(model(tokens, last=last).float(), dim=-1)
        return batch_size

    try:
        with torch.no_grad():
            return run()
    except RuntimeError as e:
        if "No executable batch size found" in str(e):
            return 1
        raise


def largest_batch_size(model, length: int, ceiling: int) -> int:
    """`auto`'s batch size for contexts of up to `length` tokens (see the module docstring)."""
    if model.embed.weight.device.type == "cpu":
        return max(1, min(ceiling, CPU_TOKENS_PER_BATCH // length))
    return probe_batch_size(model, length, ceiling)


@register_model("herd")
class HerdLM(LM):
    """lm-eval's LM interface over a herd `Transformer` and its tokenizer."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls(**merge_model_args(simple_parse_args_string(arg_string), additional_config))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        return cls(**merge_model_args(dict(arg_dict), additional_config))

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 8,
        max_batch_size: int | None = None,
        add_bos_token: bool = True,
        max_gen_toks: int = 256,
        trust_remote_code: bool = False,  # accepted for lm-eval's --trust_remote_code; unused
    ) -> None:
        super().__init__()
        from herd.checkpoint.convert import load
        from herd.tokenizer import find_tokenizer, load_tokenizer

        if checkpoint is None:
            raise HerdError("model_args: checkpoint=PATH is required (a herd, HF or Meta folder)")
        checkpoint = str(checkpoint)
        self.fixed_batch_size, self.batch_schedule = parse_batch_size(batch_size)
        self.batch_size = batch_size if self.fixed_batch_size is None else self.fixed_batch_size
        self.max_batch_size, _ = parse_batch_size(max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        if self.max_batch_size is None:
            raise HerdError(f"max_batch_size '{max_batch_size}': expected a positive integer")
        self.batch_sizes: dict[int, int] = {}  # auto's choices; lm-eval reports them
        self.model = load(checkpoint, resolve_device(device), dtype)
        found = find_tokenizer(checkpoint)
        if found is None:
            raise HerdError(f"{checkpoint}: carries no tokenizer file; lm-eval needs text")
        self.tokenizer = load_tokenizer(found)
        self.add_bos = str(add_bos_token).lower() not in ("false", "0")
        self.max_gen_toks = int(max_gen_toks)
        self.limit = self.model.config.max_seq_len

    @property
    def prefix_token_id(self) -> int:
        """What an empty context or the first rolling window is conditioned on (lm-eval's HF
        model: BOS, else EOS)."""
        for token in (self.tokenizer.bos_id, self.tokenizer.eos_id):
            if token is not None:
                return token
        return 0

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        grouped: dict[tuple[int, ...], Request] = {}
        where: list[tuple[tuple[int, ...], int]] = []
        for r in requests:
            ctx, cont = encode_pair(self.tokenizer, *r.args, self.add_bos, self.prefix_token_id)
            cont = cont[-self.limit :]
            key = tuple(truncate_left(ctx, len(cont), self.limit))
            group = grouped.setdefault(key, Request(list(key), []))
            where.append((key, len(group.continuations)))
            group.continuations.append(cont)
        # longest context first, so auto sizes each part of the schedule on its longest context
        order = sorted(grouped, key=len, reverse=True)
        bar = tqdm(total=len(order), desc="loglikelihood", disable=disable_tqdm or None)
        scored: dict[tuple[int, ...], list] = {}
        self.batch_sizes = {}
        for part, keys in enumerate(_split(order, self.batch_schedule)):
            batch = self._batch_size(part, [grouped[k] for k in keys])
            scores = score_requests(self.model, [grouped[k] for k in keys], batch, bar)
            scored.update(zip(keys, scores, strict=True))
        bar.close()
        return [(scored[k][i].logprob, scored[k][i].greedy) for k, i in where]

    def _batch_size(self, part: int, requests: Sequence[Request]) -> int:
        """The fixed batch size, or auto's for this part of the schedule."""
        if self.fixed_batch_size is not None:
            return self.fixed_batch_size
        batched = [len(r.context) for r in requests if all(len(c) == 1 for c in r.continuations)]
        if not batched:
            return 1  # nothing here runs as a batch of contexts
        if self.batch_sizes and self.batch_sizes[max(self.batch_sizes)] == self.max_batch_size:
            size = self.max_batch_size  # shorter contexts fit what longer ones did
        else:
            size = largest_batch_size(self.model, max(batched), self.max_batch_size)
            log.info("batch_size auto: %d for contexts of %d tokens", size, max(batched))
        self.batch_sizes[part] = size
        return size

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # The text is scored after one prefix token (BOS). lm-eval's HF model with a tokenizer
        # that adds BOS itself also scores that BOS after the prefix BOS (lm-eval issue #3333);
        # herd does not copy the doubled BOS, and equals the HF model with add_bos_token=False.
        prefix = self.prefix_token_id
        return [
            -rolling_nll(self.model, self.tokenizer.encode(r.args[0]), prefix) for r in requests
        ]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import normalize_gen_kwargs

        from herd.generation import stream_generate

        out = []
        for r in requests:
            context, kwargs = r.args
            # lm-eval's own reading of a task's generation kwargs: max_gen_toks and its aliases,
            # greedy unless do_sample or a temperature above 0
            kwargs = normalize_gen_kwargs(dict(kwargs or {}), self.max_gen_toks)
            until = kwargs["until"]
            budget = kwargs["max_gen_toks"]
            temperature = float(kwargs["temperature"]) if kwargs["do_sample"] else 0.0
            ids = self.tokenizer.encode(context, bos=self.add_bos)
            ids = ids[-(self.limit - budget) :] if budget < self.limit else ids[-1:]
            new: list[int] = []
            text = ""
            for step in stream_generate(
                self.model,
                ids,
                budget,
                temperature,
                top_p=float(kwargs.get("top_p") or 1.0),
                stop_ids=self.tokenizer.stop_ids,
            ):
                if step[0] in self.tokenizer.stop_ids:
                    break
                new.append(step[0])
                # lm-eval's HF model decodes without special tokens before cutting at a stop
                text = self.tokenizer.decode(new, skip_special=True)
                if any(s and s in text for s in until):
                    break
            cut = min((text.index(s) for s in until if s and s in text), default=len(text))
            out.append(text[:cut])
        return out


def _split(items: list, parts: int) -> list[list]:
    """`items` in `parts` consecutive runs of (nearly) equal length, none empty."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        runs.append(items[start:end])
        start = end
    return runs
