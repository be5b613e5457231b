"""Chat formats: Llama 3 (header tokens, <|eot_id|>, ipython role, <|python_tag|>) and Llama 2-Chat.

Each produces exactly the token sequence of Meta's reference formatter and a loss mask that is 1 on
the tokens the assistant writes (its content, tool calls and its end-of-turn token) and 0 elsewhere,
for supervised fine-tuning with prompt-loss masking (Llama 2 paper, section 3.1).

Messages are OpenAI-style dicts: {"role": "system"|"user"|"assistant"|"tool"|"ipython",
"content": str}; an assistant message may carry "tool_calls": [{"function": {"name": ...,
"arguments": {...} or a JSON string}}] and "stop_reason": "end_of_turn"|"end_of_message".

An assistant message may carry "weight": 0 (or 1, the default), the per-message loss flag of
OpenAI's fine-tuning format (axolotl reads the same key): 0 keeps the message in the context but
gives its tokens a mask of 0, so SFT computes no loss on them. Ghost Attention needs it: its rows
train on the last turn only (Llama 2 paper, section 3.3; herd/posttrain/gatt.py).

Llama 3 follows llama-models' `ChatFormat` (llama3/chat_format.py): each message is
<|start_header_id|>role<|end_header_id|>\\n\\n + content + <|eot_id|> (or <|eom_id|> when the assistant
stops to let a tool run); content is not stripped; tool results use the "ipython" role; a call of
the built-in code interpreter is preceded by <|python_tag|>; built-in search tools are written as
`name.call(query="...")` and custom tools as JSON. herd ends an assistant message that calls a
built-in tool with <|eom_id|> unless "stop_reason" says otherwise.

Llama 2 follows Meta's `chat_completion` (llama/generation.py): the system prompt is folded into the
first user turn inside <<SYS>> tags; each user/assistant pair is "[INST] q [/INST] a " with BOS and
EOS, and a final user turn "[INST] q [/INST]" with BOS only.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from herd.errors import HerdError

ROLES = ("system", "user", "assistant", "tool", "ipython")
BUILTIN_QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
CODE_INTERPRETER = "code_interpreter"
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


class EncodedDialog(NamedTuple):
    ids: list[int]
    mask: list[int]  # 1 where the assistant's tokens are (train on these), else 0


def _check(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise HerdError("dialog: expected a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise HerdError(f"dialog: message {i} is not an object")
        if m.get("role") not in ROLES:
            raise HerdError(
                f"dialog: message {i} has role {m.get('role')!r} (expected one of {ROLES})"
            )
        if not isinstance(m.get("content", ""), str):
            raise HerdError(f"dialog: message {i} content must be a string")
        if "weight" in m:
            weight = m["weight"]
            if m["role"] != "assistant":
                raise HerdError(
                    f"dialog: message {i} ({m['role']}) has 'weight'; only assistant messages may"
                )
            if isinstance(weight, bool) or weight not in (0, 1):
                raise HerdError(f"dialog: message {i} has weight {weight!r}, expected 0 or 1")


def _weight(message: dict) -> int:
    """Mask value of a message's tokens: 1 on an assistant message unless its "weight" is 0."""
    return int(message["role"] == "assistant" and message.get("weight", 1) == 1)


def _tool_calls(message: dict, index: int) -> list[tuple[str, dict]]:
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise HerdError(f"dialog: message {index} has a tool call without a function name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise HerdError(
                    f"dialog: message {index} tool call '{fn['name']}' arguments are not JSON"
                ) from None
        calls.append((fn["name"], args))
    return calls


def _format_call(name: str, args: dict) -> str:
    if name in BUILTIN_QUERY_TOOLS:
        return f'{name}.call(query="{args.get("query", "")}")'
    if name == CODE_INTERPRETER:
        return args.get("code", "")
    return json.dumps({"type": "function", "name": name, "parameters": args})


def encode_llama3(tok, messages: list[dict], add_generation_prompt: bool) -> EncodedDialog:
    special = tok.special_tokens
    needed = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>")
    missing = [n for n in needed if n not in special]
    if missing or tok.bos_id is None:
        raise HerdError(
            f"{tok.path}: has no {missing[0] if missing else 'BOS'} token (Llama 3 chat)"
        )
    ids, mask = [tok.bos_id], [0]

    def header(role: str) -> list[int]:
        role = "ipython" if role == "tool" else role
        return [
            special["<|start_header_id|>"],
            *tok.encode(role),
            special["<|end_header_id|>"],
            *tok.encode("\n\n"),
        ]

    for i, m in enumerate(messages):
        head = header(m["role"])
        body: list[int] = []
        calls = _tool_calls(m, i) if m["role"] == "assistant" else []
        if calls and calls[0][0] == CODE_INTERPRETER:
            body.append(special["<|python_tag|>"])
        body += tok.encode(m.get("content", ""))
        for name, args in calls:
            body += tok.encode(_format_call(name, args))
        stop = m.get("stop_reason")
        if stop is None:
            builtin = any(n in (*BUILTIN_QUERY_TOOLS, CODE_INTERPRETER) for n, _ in calls)
            stop = "end_of_message" if builtin else "end_of_turn"
        eom = m["role"] == "assistant" and stop == "end_of_message"
        body.append(special["<|eom_id|>" if eom else "<|eot_id|>"])
        ids += head + body
        mask += [0] * len(head) + [_weight(m)] * len(body)
    if add_generation_prompt:
        head = header("assistant")
        ids += head
        mask += [0] * len(head)
    return EncodedDialog(ids, mask)


def encode_llama2(tok, messages: list[dict], add_generation_prompt: bool) -> EncodedDialog:
    if tok.bos_id is None or tok.eos_id is None:
        raise HerdError(f"{tok.path}: Llama 2 chat needs BOS and EOS tokens")
    dialog = [dict(m) for m in messages]
    if dialog[0]["role"] == "system":
        if len(dialog) < 2:
            raise HerdError("dialog: a system message must be followed by a user message")
        first = dialog[1]
        content = B_SYS + dialog[0].get("content", "") + E_SYS + first.get("content", "")
        dialog = [{**first, "content": content}, *dialog[2:]]
    for i, m in enumerate(dialog):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise HerdError(
                f"dialog: Llama 2 chat needs user/assistant turns alternating from a user turn "
                f"(turn {i} is {m['role']!r}, expected {expected!r})"
            )
    ids: list[int] = []
    mask: list[int] = []
    for q, a in zip(dialog[::2], dialog[1::2], strict=False):
        prompt = f"{B_INST} {q.get('content', '').strip()} {E_INST}"
        full = tok.encode(f"{prompt} {a.get('content', '').strip()} ", bos=True, eos=True)
        head = tok.encode(prompt, bos=True)
        # The answer starts where the prompt's own encoding stops matching the pair's encoding.
        n = 0
        while n < min(len(head), len(full)) and head[n] == full[n]:
            n += 1
        ids += full
        mask += [0] * n + [_weight(a)] * (len(full) - n)
    if len(dialog) % 2 == 1:
        last = tok.encode(f"{B_INST} {dialog[-1].get('content', '').strip()} {E_INST}", bos=True)
        ids += last
        mask += [0] * len(last)
    return EncodedDialog(ids, mask)


def encode_dialog(tok, messages: list[dict], add_generation_prompt: bool = True) -> EncodedDialog:
    """Ids and assistant-token mask of `messages` in the tokenizer's chat format."""
    _check(messages)
    if tok.chat_format == "llama3":
        return encode_llama3(tok, messages, add_generation_prompt)
    if tok.chat_format == "llama2":
        return encode_llama2(tok, messages, add_generation_prompt)
    raise HerdError(f"{tok.path}: this tokenizer has no chat format (no BOS/EOS or header tokens)")


def encode_pictured_dialog(
    tok, messages: list[dict], image_id, add_generation_prompt: bool = True
) -> tuple[EncodedDialog, list]:
    """`encode_dialog` for messages whose content may be a list of pieces: strings, and media
    (any other object: the caller's pictures or clips), each shown where it stands, as Meta's
    ChatFormat encodes content (text piece by piece) and transformers' Mllama chat template
    renders image parts: as one `image_id`, or as the ids `image_id(piece)` returns (a clip's
    speech tokens). Returns the encoding (mask 0 on the media) and the media in the order they
    stand. Media need the Llama 3 format."""
    ids_of = image_id if callable(image_id) else (lambda _piece: [image_id])
    pieces = {i: m["content"] for i, m in enumerate(messages) if isinstance(m.get("content"), list)}
    if not pieces:
        return encode_dialog(tok, messages, add_generation_prompt), []
    if tok.chat_format != "llama3":
        raise HerdError(
            f"{tok.path}: pictures in a conversation need the Llama 3 chat format, not "
            f"{tok.chat_format}"
        )
    # Llama 3's format is one segment per message (header, content, end of turn), so the
    # dialogue with each pictured message's content left empty is cut into segments, and the
    # pieces go before the segment's end-of-turn token.
    empty = [{**m, "content": ""} if i in pieces else m for i, m in enumerate(messages)]
    ids, mask, shown, done = [], [], [], 0
    for i in range(len(empty)):
        seg = encode_dialog(tok, empty[: i + 1], add_generation_prompt=False)
        seg_ids, seg_mask = seg.ids[done:], seg.mask[done:]
        done += len(seg_ids)
        if i in pieces:
            body, body_mask = [], []
            for piece in pieces[i]:
                if isinstance(piece, str):  # the turn's own mask (its end token's: 1 for a
                    text = tok.encode(piece)  # trained assistant turn)
                    body.extend(text)
                    body_mask.extend([seg_mask[-1]] * len(text))
                else:
                    shown_ids = ids_of(piece)
                    body.extend(shown_ids)
                    body_mask.extend([0] * len(shown_ids))
                    shown.append(piece)
            seg_ids = seg_ids[:-1] + body + seg_ids[-1:]
            seg_mask = seg_mask[:-1] + body_mask + seg_mask[-1:]
        ids += seg_ids
        mask += seg_mask
    if add_generation_prompt:
        header = encode_dialog(tok, empty, add_generation_prompt=True).ids[done:]
        ids += header
        mask += [0] * len(header)
    return EncodedDialog(ids, mask), shown


def conversation_pad_id(tok) -> int:
    """An id for right-padding formatted conversations that they never contain: transformers'
    sequence classifiers (a reward model's HF export) find a row's last token as the last one that
    is not the pad id, so padding with a token a conversation ends with (Llama 2's EOS) would move
    it. The tokenizer's pad id, else Llama 3's <|finetune_right_pad_id|>, else Llama 2's <unk>."""
    if tok.pad_id is not None:
        return tok.pad_id
    for name in ("<|finetune_right_pad_id|>", "<unk>"):
        if name in tok.special_tokens:
            return tok.special_tokens[name]
    return tok.eos_id if tok.eos_id is not None else 0
