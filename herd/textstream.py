"""`herd generate` and `herd chat`: generated text streamed to stdout as tokens are produced.

Tokens are decoded incrementally: the whole continuation is re-decoded each step and only the new
suffix is printed, so multi-byte characters split across tokens print once complete. Text that could
still turn into a `--stop` string is held back until it cannot. With `--chat` (and in `herd chat`)
the prompt is laid out in the checkpoint tokenizer's chat format and generation stops at the
end-of-turn token. `herd chat --guard GUARD` checks each user line and each reply with a safety
guard (herd/guard/moderator.py); its replies are then generated whole and printed once checked.

`--image PATH` (a Llama 3.2 Vision model) and `--audio PATH` (a speech model) show the model
pictures or clips (herd/prompt_media.py): read before the weights load, so a bad file fails fast,
and put in the prompt before the user turn's text with --chat (in `herd chat`, the first user
turn), else before the BOS token, as transformers' MllamaProcessor lays out a plain prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from herd.checkpoint.loading import load_for_command
from herd.errors import HerdError
from herd.generation import stream_generate
from herd.prompt_media import read_media
from herd.tokenizer.chat import encode_pictured_dialog


class TextStreamer:
    """Accumulates token ids and returns the printable new text after each one."""

    def __init__(self, tokenizer, stop_strings: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.printed = 0
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special=True)
        for stop in self.stops:
            at = text.find(stop)
            if at != -1:
                self.stopped = True
                text = text[:at]
        if self.stopped:
            return self._emit(text, len(text))
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            return ""
        hold = max((_overlap(text, s) for s in self.stops), default=0)
        return self._emit(text, len(text) - hold)

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special=True)
        return "" if self.stopped else self._emit(text, len(text))

    def _emit(self, text: str, upto: int) -> str:
        if upto <= self.printed:
            return ""
        out = text[self.printed : upto]
        self.printed = upto
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def _check_sampling(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise HerdError(f"--max-new-tokens {args.max_new_tokens}: expected at least 1")
    if args.temperature < 0:
        raise HerdError(f"--temperature {args.temperature}: expected >= 0")
    if not 0 < args.top_p <= 1:
        raise HerdError(f"--top-p {args.top_p}: expected a value in (0, 1]")
    if args.top_k < 0:
        raise HerdError(f"--top-k {args.top_k}: expected >= 0")


def stream_reply(
    model,
    tokenizer,
    prompt: list[int],
    args: argparse.Namespace,
    bidirectional_prefix: int = 0,
    echo: bool = True,
    media: dict | None = None,
) -> tuple[str, int]:
    """Generate after `prompt` (showing the model `media`: {"images": ...} or {"audio": ...}),
    writing text (or ids) to stdout as it comes unless not `echo`; (text, tokens)."""
    write = sys.stdout.write if echo else (lambda text: None)
    stop_ids = tokenizer.stop_ids if tokenizer else []
    streamer = TextStreamer(tokenizer, args.stop) if tokenizer else None
    count = 0
    for step in stream_generate(
        model,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop_ids=stop_ids,
        compile=args.compile,
        bidirectional_prefix=bidirectional_prefix,
        **(media or {}),
    ):
        token = step[0]
        count += 1
        if token in stop_ids:
            break
        write(f"{token} " if streamer is None else streamer.push(token))
        sys.stdout.flush()
        if streamer is not None and streamer.stopped:
            break
    if streamer is None:
        return "", count
    write(streamer.flush())
    return tokenizer.decode(streamer.ids, skip_special=True)[: streamer.printed], count


SENTINEL = "<|mask_0|>"


def _sentinel_ids(tokenizer) -> list[int]:
    """The sentinels training used (herd.data.objectives.tokenizer_sentinels); <|mask_0|> in the prompt
    text marks where the first one goes."""
    from herd.data.objectives import tokenizer_sentinels

    ids = tokenizer_sentinels(tokenizer)
    if not ids:
        raise HerdError(
            f"{tokenizer.path}: no sentinel tokens; --infill needs a tokenizer "
            "trained by `herd tokenizer train` and a model trained on mskuni/mskbi"
        )
    return ids


def _infill_prompt(tokenizer, text: str) -> tuple[list[int], str, str]:
    """Ids asking a masked-objective model to fill the one <|mask_0|> in `text` (CM3 layout)."""
    from herd.data.objectives import infill_prompt

    if text.count(SENTINEL) != 1:
        raise HerdError(f"--infill: the prompt must contain {SENTINEL} exactly once")
    prefix, suffix = text.split(SENTINEL)
    sentinels = _sentinel_ids(tokenizer)
    head = tokenizer.encode(prefix, bos=True)
    tokens = [*head, *tokenizer.encode(suffix, eos=True)]
    ids = infill_prompt(tokens, [(len(head), len(head))], sentinels)
    return ids, prefix, suffix


def trained_objective(checkpoint: Path) -> str | None:
    """data.objective of the run that wrote `checkpoint` when it sits in a herd run folder
    (RUN/checkpoints/step-N next to RUN/config.toml), else None."""
    from herd.train.config import load_run_config

    checkpoint = checkpoint.resolve()  # `herd generate .` inside the step folder too
    config = checkpoint.parent.parent / "config.toml"
    if checkpoint.parent.name != "checkpoints" or not config.is_file():
        return None
    try:
        return load_run_config(str(config)).data.objective
    except (HerdError, OSError, UnicodeDecodeError) as e:
        sys.stderr.write(f"[--prompt-attention auto: {e}; the prompt attends causally]\n")
        return None


def bidirectional_prefix(args: argparse.Namespace, prompt: list[int]) -> int:
    """How many leading prompt tokens attend both ways (--prompt-attention): none, or the whole
    prompt (a prefix-LM prefix), or with --infill everything before the appended sentinel, the
    region training marks as the context. (An mskbi model given a plain prompt gets the whole
    prompt too: it only ever saw its context attend both ways, though it was trained to predict
    infilled spans, not continuations.)"""
    from herd.data.objectives import OBJECTIVES

    both = args.prompt_attention == "bidirectional"
    if args.prompt_attention == "auto":
        objective = trained_objective(Path(args.checkpoint))
        both = objective in OBJECTIVES and OBJECTIVES[objective][1]
        if both:
            sys.stderr.write(
                f"[the prompt attends both ways, as data.objective = {objective} trained this "
                "model; --prompt-attention causal turns it off]\n"
            )
    if not both:
        return 0
    return len(prompt) - 1 if args.infill else len(prompt)


def run_generate(args: argparse.Namespace) -> None:
    _check_sampling(args)
    if (args.image or args.audio or args.video) and args.infill:
        raise HerdError("--image, --audio or --video and --infill cannot be combined")
    media = read_media(args)
    needed = "to encode --prompt (or pass the prompt as --prompt-ids)" if args.prompt else None
    model, tokenizer, device = load_for_command(args.checkpoint, args.device, args.dtype, needed)
    stop_strings = list(args.stop)
    if args.prompt is None:
        prompt = args.prompt_ids
    elif args.infill:
        prompt, prefix, suffix = _infill_prompt(tokenizer, args.prompt)
        sys.stdout.write(prefix)
    elif args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": args.prompt})
        ids_of = None
        if media is not None:
            media.check_chat(tokenizer)
            messages, ids_of = media.first_in_chat(messages), media.ids_of
        prompt = encode_pictured_dialog(tokenizer, messages, ids_of)[0].ids
    else:
        prompt = tokenizer.encode(args.prompt, bos=args.bos)
        if media is not None:
            prompt = media.before(prompt)
    start = time.perf_counter()
    if args.infill:
        # the span ends where the model opens the next sentinel
        args.stop = [*stop_strings, *(tokenizer.decode([i]) for i in _sentinel_ids(tokenizer)[1:])]
    _, count = stream_reply(
        model, tokenizer, prompt, args, bidirectional_prefix(args, prompt),
        media=media.inputs if media else None,
    )  # fmt: skip
    if args.infill:
        sys.stdout.write(suffix)
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    sys.stderr.write(f"[{count} tokens, {count / elapsed:.1f} tokens/s on {device}]\n")


def run_chat(args: argparse.Namespace) -> None:
    """A read-eval-print loop over a growing conversation; /reset clears it, /exit or EOF ends."""
    from herd.guard.cli import guard_policy
    from herd.guard.moderator import load_moderator

    _check_sampling(args)
    policy = guard_policy(args)  # a bad --guard fails before the model loads
    media = read_media(args)
    model, tokenizer, _ = load_for_command(
        args.checkpoint, args.device, args.dtype, "to read and write the conversation"
    )
    if tokenizer is None:
        raise HerdError(f"{args.checkpoint}: carries no tokenizer file")
    if tokenizer.chat_format is None:
        raise HerdError(f"{tokenizer.path}: this tokenizer has no chat format")
    if media is not None:
        media.check_chat(tokenizer)

    def encode(messages: list[dict]) -> list[int]:
        if media is None:
            return encode_pictured_dialog(tokenizer, messages, None)[0].ids
        return encode_pictured_dialog(tokenizer, media.first_in_chat(messages), media.ids_of)[0].ids

    guard = load_moderator(args, policy)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    sys.stderr.write(f"herd chat ({tokenizer.chat_format} format); /reset, /exit\n")
    while True:
        try:
            line = input("> ")
        except EOFError:
            sys.stdout.write("\n")
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        if guard is not None and _unsafe(guard, "input", guard.check_input_sync(messages)):
            # The unsafe line stays out of the history: later turns (and their checks) would
            # otherwise carry it.
            messages.pop()
            sys.stdout.write(guard.refusal + "\n")
            continue
        prompt = encode(messages)
        if len(prompt) + args.max_new_tokens > model.config.max_seq_len:
            sys.stderr.write("conversation too long for the context; starting over (/reset)\n")
            messages = [*system, {"role": "user", "content": line}]
            prompt = encode(messages)
        reply, _ = stream_reply(
            model, tokenizer, prompt, args, echo=guard is None,
            media=media.inputs if media else None,
        )  # fmt: skip
        if guard is not None:  # generated whole, shown only once checked
            if _unsafe(guard, "output", guard.check_output_sync(messages, reply)):
                reply = guard.refusal
            sys.stdout.write(reply)
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


def _unsafe(guard, stage: str, result) -> bool:
    """Whether the guard's `result` refuses; its decision goes to stderr as one line."""
    if result is None:
        return False
    sys.stderr.write(f"guard: {guard.describe(stage, result)}\n")
    return result.label == "unsafe"
