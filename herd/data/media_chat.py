"""Conversations whose user turns hold media parts (pictures, clips) beside their text.

Image-text and audio-text training rows (herd/data/image_text.py, audio_text.py) both take a
chat in OpenAI's message layout where a user message's content may be a list of parts: text
parts, and media parts of the kinds the caller reads. `split_media_parts` checks the layout and
reads each medium in place; `encode_media_chat` validates the conversation as SFT's rows are
validated (herd/data/chat_data.py) and encodes it with each medium where its part stands
(herd.tokenizer.chat.encode_pictured_dialog), the loss on the assistant's turns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from herd.data.chat_data import check_sft_row
from herd.tokenizer.chat import encode_pictured_dialog


def row_folder(where: str) -> Path | None:
    """The folder of a row's file (FILE:LINE), which relative media paths are read from; None
    for rows that come from no file (a Hugging Face dataset)."""
    file = where.rpartition(":")[0]
    return Path(file).parent if file and Path(file).is_file() else None


def encode_caption(tok, lead: list[int], text: object) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of a media row: the ids showing its media (`lead`), then BOS, the text,
    EOS; the targets are the text and its EOS (no loss on the media ids or BOS)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: expected a non-empty string")
    ids = tok.encode(text, bos=True, eos=True)
    return lead + ids, [0] * (len(lead) + 1) + [1] * (len(ids) - 1)


def split_media_parts(
    messages: object, kinds: tuple[str, ...], read: Callable[[dict, str], object], word: str
) -> tuple[list[dict], dict[int, list]]:
    """(messages with their text joined, {message index: its parts in order}), a part being a
    text or what `read(part, "messages[i].content[j]")` returns for a part of one of `kinds`.
    `word` names the media in errors ("an image", "audio"); ValueError naming the part."""
    if not isinstance(messages, list):
        raise ValueError("messages: expected a list of messages")
    plain, pieces = [], {}
    expected = ", ".join(("a text", *kinds[:-1])) + f" or {kinds[-1]} part"
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            plain.append(m)
            continue
        parts = []
        for j, part in enumerate(content):
            what = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in kinds:
                if m.get("role") != "user":
                    raise ValueError(f"{what}: {word} in a {m.get('role')!r} turn; only user turns")
                parts.append(read(part, what))
            else:
                raise ValueError(f"{what}: expected {expected}")
        text = "".join(p for p in parts if isinstance(p, str))
        # validated with its text, or a stand-in when the turn is media alone
        plain.append({**m, "content": text if text.strip() else "<media>"})
        pieces[i] = parts
    return plain, pieces


def encode_media_chat(tok, plain: list[dict], pieces: dict[int, list], ids_of, word: str):
    """(ids, loss mask, media in order) of the conversation, each medium shown as `ids_of`
    gives (one id, or a callable of the medium); media need the Llama 3 chat format."""
    messages = check_sft_row({"messages": plain}, tok.chat_format)
    if pieces and tok.chat_format != "llama3":
        raise ValueError(f"messages: a conversation with {word} needs the Llama 3 chat format")
    shown = [{**m, "content": pieces[i]} if i in pieces else m for i, m in enumerate(messages)]
    encoded, media = encode_pictured_dialog(tok, shown, ids_of, add_generation_prompt=False)
    return encoded.ids, encoded.mask, media
