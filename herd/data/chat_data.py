"""Conversational SFT and DPO datasets: read rows, validate them, tokenize them in a chat format.

Rows come from JSONL files, Parquet files, folders of either, a folder saved by `datasets`
(`save_to_disk`), or a Hugging Face dataset name ("org/name", on the Hub or in the local caches
offline; herd/data/hf_datasets.py), each of the last two read at its `split`. Every row is named
FILE:LINE in reports (Parquet and dataset rows count from 1), as in herd's other row-wise data
(`herd.eval.mc_data`).

SFT rows (Llama 2 paper, section 3.1; Llama 3 paper, section 4.1):
    {"messages": [{"role": "system"|"user"|"assistant"|"tool"|"ipython", "content": str,
                   "tool_calls": [...] (assistant only, optional)}, ...]}
An SFT example is `encode_dialog(messages, add_generation_prompt=False)`: its ids, and a loss mask
that is 1 on the assistant's content and its end-of-turn token. An assistant message with
"weight": 0 (OpenAI's fine-tuning flag; 1 is the default) stays in the context with a mask of 0:
Ghost Attention's rows train on their last turn alone this way (herd/posttrain/gatt.py).

DPO rows follow TRL's conversational preference format:
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
herd also accepts, as TRL's docs show them: `chosen`/`rejected` as a single assistant message dict
or a plain string (one assistant message with that content), a string `prompt` (one user message),
and the implicit-prompt form without `prompt`, whose prompt is the messages `chosen` and
`rejected` share from the start (TRL's `extract_prompt`). A response is a list of assistant (and,
with Llama 3, tool) messages that starts and ends with an assistant message. A DPO example holds
the prompt's ids (`encode_dialog(prompt, add_generation_prompt=True)`) and, for each response, the
ids that follow them in `encode_dialog(prompt + response, add_generation_prompt=False)` (checked to
be an exact continuation), with a mask that is 1 on the response's content tokens, the tokens
the DPO term scores; the assistant's termination tokens (<|eot_id|>, <|eom_id|>; Llama 2's EOS)
are 2, kept out of the DPO term as Llama 3 keeps them (section 4.1.4) but scored by the NLL term
on the chosen response (herd/posttrain/dpo.py says why); headers and other turns are 0.

Validation, one line per problem: the row is not an object or lacks its field; a message that is
not an object, has an unknown role or non-string content; a system message anywhere but first; a
conversation that does not start with a user turn (after an optional system message); two user
or two assistant turns in a row; a tool result that does not follow an assistant turn or another
tool result, or a user turn right after a tool result; tool roles with Llama 2 (its format has
none); empty system or user content, or an empty assistant message without tool calls; no
assistant turn; an empty or identical chosen/rejected. A malformed row is skipped and counted
(`problems`, "FILE:LINE: what is wrong"), or fatal with `strict`. A tokenizer without a chat format
is always fatal.

Length rules (counted in `counts["too_long"]` / `counts["truncated"]`):
- SFT: a dialogue of n tokens fills n - 1 positions of a training row (its last token is only a
  target), so it fits a row of `seq_len` positions when n <= seq_len + 1. A longer one is dropped
  (`on_long="drop"`, the default) or cut to its first seq_len + 1 tokens (`on_long="truncate"`),
  and then dropped if no assistant token is left to predict.
- DPO: a pair whose prompt plus longer response exceeds `max_len` tokens is dropped. Cutting the
  prompt would remove turns the responses answer, and cutting a response would train on an
  answer that stops mid-way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.data.hf_datasets import hub_rows, is_saved_dataset, saved_rows
from herd.data.sources import source_files
from herd.errors import HerdError
from herd.tokenizer.chat import ROLES, EncodedDialog, encode_dialog

TOOL_ROLES = ("tool", "ipython")
ROW_SUFFIXES = (".jsonl", ".parquet")


@dataclass
class SFTExample:
    ids: list[int]
    mask: list[int]  # 1 on the tokens the assistant writes (the loss), else 0
    source: str  # FILE:LINE


@dataclass
class DPOExample:
    prompt_ids: list[int]
    chosen_ids: list[int]  # the tokens after the prompt
    chosen_mask: list[int]  # 1 on content tokens, 2 on the assistant's terminators, 0 elsewhere
    rejected_ids: list[int]
    rejected_mask: list[int]
    source: str  # FILE:LINE


@dataclass
class ChatData:
    """Examples of one or more sources, the rows skipped and why, and how many rows went where."""

    examples: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what is wrong"
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "rows": 0,
            "kept": 0,
            "malformed": 0,
            "too_long": 0,
            "truncated": 0,
        }
    )


# --- reading ---------------------------------------------------------------------------------------


def _file_rows(path: Path) -> Iterator[tuple[str, object]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise HerdError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        try:
            table = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise HerdError(f"{path}: not a readable Parquet file ({e})") from None
        number = 0
        for batch in table.iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield f"{path}:{number}", row
        return
    if path.suffix != ".jsonl":
        raise HerdError(f"{path}: expected a .jsonl or .parquet file of conversations")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HerdError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path}:{number}", ValueError(f"not valid JSON ({e.msg})")


def read_rows(source: str | Path, split: str = "train") -> Iterator[tuple[str, object]]:
    """(FILE:LINE, row) of every row of a JSONL/Parquet file, a folder of them, a folder saved by
    `datasets` (`save_to_disk`), or a Hugging Face dataset's `split`; a line that is not JSON
    comes as a ValueError saying so."""
    if is_saved_dataset(source):
        yield from saved_rows(source, split)
        return
    files = source_files(str(source))
    if files is None:
        yield from hub_rows(str(source), split)
        return
    if Path(source).is_dir():
        files = [p for p in files if p.suffix in ROW_SUFFIXES]
        if not files:
            raise HerdError(f"{source}: folder holds no .jsonl or .parquet files")
    for path in files:
        yield from _file_rows(path)


# --- validation ------------------------------------------------------------------------------------


def _message(m: object, i: int, chat_format: str) -> dict:
    """A clean copy of message `i`: keys whose value is None dropped (Parquet fills absent struct
    fields with nulls), content "" when absent."""
    if not isinstance(m, dict):
        raise ValueError(f"message {i} is not an object")
    m = {k: v for k, v in m.items() if v is not None}
    role = m.get("role")
    if role not in ROLES:
        raise ValueError(f"message {i} has unknown role {role!r} (expected one of {ROLES})")
    if chat_format == "llama2" and role in TOOL_ROLES:
        raise ValueError(f"message {i} has role {role!r}, but Llama 2 chat has no tool role")
    m.setdefault("content", "")
    if not isinstance(m["content"], str):
        raise ValueError(f"message {i} ({role}) content must be a string")
    if m.get("tool_calls") and role != "assistant":
        raise ValueError(f"message {i} ({role}) has tool_calls; only assistant messages may")
    empty = not m["content"].strip()
    if empty and (role in ("system", "user") or (role == "assistant" and not m.get("tool_calls"))):
        raise ValueError(f"message {i} ({role}) has empty content")
    return m


def check_messages(messages: object, chat_format: str, what: str = "messages") -> list[dict]:
    """The messages of a conversation, cleaned; ValueError naming the first thing wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{what}' must be a non-empty list of messages")
    out = [_message(m, i, chat_format) for i, m in enumerate(messages)]
    prev = None
    for i, m in enumerate(out):
        role = m["role"]
        if role == "system":
            if i != 0:
                raise ValueError(f"message {i}: a system message is allowed only first")
        elif prev in (None, "system"):
            if role != "user":
                raise ValueError(
                    f"message {i}: the conversation starts with {role!r}, expected 'user'"
                )
        elif role == prev and role in ("user", "assistant"):
            raise ValueError(f"message {i}: two {role} turns in a row")
        elif role in TOOL_ROLES and prev not in ("assistant", *TOOL_ROLES):
            raise ValueError(f"message {i}: a {role} result must follow an assistant turn")
        elif role == "user" and prev in TOOL_ROLES:
            raise ValueError(f"message {i}: a user turn follows a tool result; expected assistant")
        prev = role
    return out


def check_sft_row(row: object, chat_format: str) -> list[dict]:
    """The messages of an SFT row; ValueError naming the first thing wrong."""
    if isinstance(row, Exception):
        raise ValueError(str(row))
    if not isinstance(row, dict) or "messages" not in row:
        raise ValueError("expected an object with a 'messages' list")
    messages = check_messages(row["messages"], chat_format)
    replies = [m for m in messages if m["role"] == "assistant"]
    if not replies:
        raise ValueError("no assistant turn (nothing to train on)")
    for i, m in enumerate(messages):
        if "weight" not in m:
            continue
        weight = m["weight"]
        if m["role"] != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
            raise ValueError(
                f"message {i} ({m['role']}) has weight {weight!r}; expected 0 or 1 on an "
                "assistant message"
            )
    if all(m.get("weight", 1) == 0 for m in replies):
        raise ValueError("every assistant turn has weight 0 (nothing to train on)")
    return messages


def _response(value: object, name: str) -> list:
    if value is None:
        raise ValueError(f"missing field '{name}'")
    if isinstance(value, str):
        value = [{"role": "assistant", "content": value}] if value.strip() else []
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"'{name}' must be a list of messages, a message or a string")
    if not value:
        raise ValueError(f"'{name}' is empty")
    return value


def check_dpo_row(row: object, chat_format: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) messages of a preference row; ValueError on the first thing
    wrong."""
    if isinstance(row, Exception):
        raise ValueError(str(row))
    if not isinstance(row, dict):
        raise ValueError("expected an object with 'prompt', 'chosen' and 'rejected'")
    chosen = _response(row.get("chosen"), "chosen")
    rejected = _response(row.get("rejected"), "rejected")
    prompt = row.get("prompt")
    if prompt is None:  # implicit prompt: the messages both conversations start with
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise ValueError("no 'prompt', and 'chosen' and 'rejected' share no leading messages")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    elif isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    prompt = check_messages(prompt, chat_format, "prompt")
    if prompt[-1]["role"] == "assistant" or prompt[-1]["role"] == "system":
        raise ValueError(f"the prompt ends with a {prompt[-1]['role']} turn; expected user or tool")
    pair = []
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        for i, m in enumerate(response):
            if not isinstance(m, dict) or m.get("role") not in ("assistant", *TOOL_ROLES):
                role = m.get("role") if isinstance(m, dict) else None
                raise ValueError(f"'{name}' message {i} has role {role!r}; expected assistant")
        if response[-1].get("role") != "assistant":
            raise ValueError(f"'{name}' does not end with an assistant message")
        try:
            pair.append(check_messages(prompt + response, chat_format)[len(prompt) :])
        except ValueError as e:
            raise ValueError(f"'{name}': {e}") from None
    if pair[0] == pair[1]:
        raise ValueError("'chosen' and 'rejected' are identical")
    return prompt, pair[0], pair[1]


# --- tokenization ----------------------------------------------------------------------------------


def require_chat_format(tok) -> str:
    if tok.chat_format not in ("llama3", "llama2"):
        raise HerdError(
            f"{tok.path}: this tokenizer has no chat format; SFT and DPO data need a Llama 3 or "
            "Llama 2 chat tokenizer"
        )
    return tok.chat_format


def _encode(tok, messages: list[dict], add_generation_prompt: bool) -> EncodedDialog:
    try:
        return encode_dialog(tok, messages, add_generation_prompt)
    except HerdError as e:
        raise ValueError(str(e).removeprefix("dialog: ")) from None


def encode_sft(tok, messages: list[dict], source: str = "") -> SFTExample:
    ids, mask = _encode(tok, messages, add_generation_prompt=False)
    return SFTExample(ids, mask, source)


def termination_ids(tok) -> set[int]:
    """Tokens that end a turn: out of the DPO term, in the NLL term (mask value 2)."""
    ids = set(tok.stop_ids)
    for name in ("<|eot_id|>", "<|eom_id|>"):
        if name in tok.special_tokens:
            ids.add(tok.special_tokens[name])
    if tok.eos_id is not None:
        ids.add(tok.eos_id)
    return ids


def encode_dpo(
    tok, prompt: list[dict], chosen: list[dict], rejected: list[dict], source: str = ""
) -> DPOExample:
    """Prompt ids and each response's ids and content mask (see the module docstring)."""
    prompt_ids = _encode(tok, prompt, add_generation_prompt=True).ids
    stops = termination_ids(tok)
    parts = []
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        full = _encode(tok, prompt + response, add_generation_prompt=False)
        n = len(prompt_ids)
        if full.ids[:n] != prompt_ids:
            raise ValueError(
                f"'{name}': the prompt's tokens are not a prefix of the conversation's"
            )
        ids = full.ids[n:]
        mask = [m and (2 if t in stops else 1) for t, m in zip(ids, full.mask[n:], strict=True)]
        if 1 not in mask:
            raise ValueError(f"'{name}' has no content tokens")
        parts += [ids, mask]
    return DPOExample(prompt_ids, *parts, source)


# --- loading ---------------------------------------------------------------------------------------


def _problem(data: ChatData, where: str, error: ValueError, strict: bool) -> None:
    if strict:
        raise HerdError(f"{where}: {error}")
    data.problems.append(f"{where}: {error}")
    data.counts["malformed"] += 1


def _sources(sources) -> list:
    return [sources] if isinstance(sources, str | Path) else list(sources)


def load_examples(
    sources: str | Path | list,
    split: str,
    encode,
    seq_len: int,
    on_long: str = "drop",
    strict: bool = False,
) -> ChatData:
    """The rows of `sources` made examples by `encode(row, where)` (a ValueError makes the row
    malformed), each example's `ids` and `mask` fitting a training row of `seq_len` positions:
    longer ones dropped, or with `on_long="truncate"` cut and kept while a target remains."""
    if on_long not in ("drop", "truncate"):
        raise HerdError(f"on_long must be 'drop' or 'truncate', got {on_long!r}")
    if seq_len < 1:
        raise HerdError(f"seq_len must be positive, got {seq_len}")
    data = ChatData()
    for source in _sources(sources):
        for where, row in read_rows(source, split):
            data.counts["rows"] += 1
            try:
                example = encode(row, where)
            except ValueError as e:
                _problem(data, where, e, strict)
                continue
            if len(example.ids) > seq_len + 1:
                example.ids, example.mask = example.ids[: seq_len + 1], example.mask[: seq_len + 1]
                if on_long == "drop" or not any(example.mask[1:]):
                    data.counts["too_long"] += 1
                    continue
                data.counts["truncated"] += 1
            data.examples.append(example)
    data.counts["kept"] = len(data.examples)
    return data


def load_sft(
    tok,
    sources: str | Path | list,
    seq_len: int,
    on_long: str = "drop",
    strict: bool = False,
    split: str = "train",
) -> ChatData:
    """SFT examples of `sources`, each fitting a training row of `seq_len` positions."""
    chat_format = require_chat_format(tok)

    def encode(row, where: str) -> SFTExample:
        return encode_sft(tok, check_sft_row(row, chat_format), where)

    return load_examples(sources, split, encode, seq_len, on_long, strict)


def load_dpo(
    tok,
    sources: str | Path | list,
    max_len: int,
    strict: bool = False,
    split: str = "train",
    extend=None,
) -> ChatData:
    """DPO examples of `sources` whose prompt plus longer response fits `max_len` tokens.
    `extend(row, example)`, when given, makes each kept example from its row (the reward
    model's rating and margin, herd/posttrain/reward_data.py); a ValueError from it makes the
    row malformed like any other problem."""
    chat_format = require_chat_format(tok)
    data = ChatData()
    for source in _sources(sources):
        for where, row in read_rows(source, split):
            data.counts["rows"] += 1
            try:
                example = encode_dpo(tok, *check_dpo_row(row, chat_format), where)
                if extend is not None:
                    example = extend(row, example)
            except ValueError as e:
                _problem(data, where, e, strict)
                continue
            longer = max(len(example.chosen_ids), len(example.rejected_ids))
            if len(example.prompt_ids) + longer > max_len:
                data.counts["too_long"] += 1
                continue
            data.examples.append(example)
    data.counts["kept"] = len(data.examples)
    return data
