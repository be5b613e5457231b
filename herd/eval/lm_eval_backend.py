"""lm-evaluation-harness bridge: herd models as an lm-eval model named "herd".

Importing this module registers `HerdLM` in lm-eval's model registry, after which every lm-eval
task runs on a herd checkpoint (herd, HF, Meta or llama2.c):

    herd lm-eval --model herd --model_args checkpoint=runs/x/checkpoints/step-00001000 \\
        --tasks belebele_eng_Latn,hellaswag --batch_size 8

`herd lm-eval` is lm-eval's own command line (same options) with this module imported first;
lm-eval 0.4 discovers models only through its registry, not through package entry points, so the
bare `lm_eval` command cannot see a third-party model. From Python:
`import herd.eval.lm_eval_backend` then `lm_eval.simple_evaluate(model="herd", ...)`.

Requests are tokenised with lm-eval's own context/continuation split (herd.eval.scoring), and
loglikelihood requests that share a context (the choices of one question) are scored together
from one KV-cached prefix. `loglikelihood_rolling` uses lm-eval's rolling windows; `generate_until`
samples (greedy unless `do_sample`) until a stop string or `max_gen_toks`.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401 - fills lm-eval's registry first: registering into an empty
from lm_eval.api.model import LM  # one would hide the built-in models (lm-eval 0.4.13)
from lm_eval.api.registry import register_model

from herd.eval.scoring import (
    Request,
    rolling_nll,
    score_requests,
    split_continuation,
    truncate_left,
)


@register_model("herd")
class HerdLM(LM):
    """lm-eval's LM interface over a herd `Transformer` and its tokenizer."""

    def __init__(
        self,
        checkpoint: str,
        batch_size: int | str = 8,
        device: str | None = None,
        dtype: str | None = None,
        add_bos_token: bool = True,
        max_gen_toks: int = 256,
        **_ignored,  # lm-eval passes max_batch_size and others meant for its HF backend
    ) -> None:
        super().__init__()
        import torch

        from herd.checkpoint.convert import load
        from herd.tokenizer import find_tokenizer, load_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load(checkpoint, device, dtype)
        found = find_tokenizer(checkpoint)
        if found is None:
            raise ValueError(f"{checkpoint}: carries no tokenizer file; lm-eval needs text")
        self.tokenizer = load_tokenizer(found)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.add_bos = str(add_bos_token).lower() not in ("false", "0")
        self.max_gen_toks = int(max_gen_toks)
        self.limit = self.model.config.max_seq_len

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":  # lm-eval scores an empty context after the prefix (BOS) token
            prefix = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0
            return [prefix], self.tokenizer.encode(continuation)
        return split_continuation(self.tokenizer, context, continuation, self.add_bos)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        grouped: dict[tuple[int, ...], Request] = {}
        where: list[tuple[tuple[int, ...], int]] = []
        for r in requests:
            ctx, cont = self._pair(*r.args)
            cont = cont[-self.limit :]
            key = tuple(truncate_left(ctx, len(cont), self.limit))
            group = grouped.setdefault(key, Request(list(key), []))
            where.append((key, len(group.continuations)))
            group.continuations.append(cont)
        order = list(grouped)
        bar = tqdm(total=len(order), desc="loglikelihood", disable=disable_tqdm or None)
        scored = dict(
            zip(
                order,
                score_requests(self.model, [grouped[k] for k in order], self.batch_size, bar),
                strict=True,
            )
        )
        bar.close()
        return [(scored[k][i].logprob, scored[k][i].greedy) for k, i in where]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        prefix = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0
        return [
            -rolling_nll(self.model, self.tokenizer.encode(r.args[0]), prefix) for r in requests
        ]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from herd.generation import stream_generate

        out = []
        for r in requests:
            context, kwargs = r.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            sample = bool(kwargs.get("do_sample", False))
            temperature = (
                float(kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            )
            ids = self.tokenizer.encode(context, bos=self.add_bos)
            ids = ids[-(self.limit - budget) :] if budget < self.limit else ids[-1:]
            new: list[int] = []
            text = ""
            for step in stream_generate(
                self.model, ids, budget, temperature, stop_ids=self.tokenizer.stop_ids
            ):
                if step[0] in self.tokenizer.stop_ids:
                    break
                new.append(step[0])
                text = self.tokenizer.decode(new)
                if any(s in text for s in until):
                    break
            cut = min((text.index(s) for s in until if s in text), default=len(text))
            out.append(text[:cut])
        return out
