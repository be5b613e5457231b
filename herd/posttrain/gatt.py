"""`herd gatt`: Ghost Attention data, multi-turn dialogues that keep following a system instruction.

Llama 2 paper, section 3.3: take a multi-turn dialogue and an instruction ("act as Napoleon",
"speak in French"); append the instruction to every user turn and sample every assistant reply
with the current model, so each reply follows it; then keep the instruction in the first turn
only and train on the result with the loss zeroed on all tokens of the previous turns, assistant
replies included. The model learns to answer the last turn as the instruction demands although
the instruction was given once, turns earlier. Zeroing the earlier replies' loss matters: they
were sampled with the instruction beside their own user turn, a context the training row no
longer shows them in (the paper's "mismatch at training time").

Choices herd makes where the paper leaves room:
- The instruction joins the training row as the system message (`placement="system"`, the
  default): how a user gives one at inference (`herd chat --system`, a served system message).
  In Llama 2's chat format the system message is prefixed to the first user turn inside <<SYS>>
  tags, which is the paper's "first turn"; with Llama 3 it has its own header. A dialogue's own
  system message stays, with the instruction after it. `placement="first-user"` instead appends
  the instruction to the first user turn, exactly as it stood while sampling.
- While sampling, a user turn reads "USER TEXT\\n\\nINSTRUCTION" (the paper "concatenates").
- Every assistant reply of the row is the model's sample; all but the last carry "weight": 0,
  the SFT loss flag (herd/tokenizer/chat.py), so only the last reply and its end-of-turn token
  are trained. `every_turn` writes one row per assistant turn (the dialogue cut after it), so
  each sample is trained once, at its own depth.
- A row whose last reply hit `max_new_tokens` before its end-of-turn token is dropped (training on
  it would teach the model to stop mid-sentence) unless `keep_unfinished`; earlier unfinished
  replies are context only and stay.

Instructions (section 3.3): hobbies ("You enjoy e.g. Tennis"), languages ("Speak in e.g.
French") and public figures ("Act as e.g. Napoleon"), randomly combined, and half of the time
shortened ("Always act as Napoleon from now" -> "Figure: Napoleon."). `synthetic_instructions`
builds them from the lists below; `--instructions F` reads one per line instead.

Sampling is batched over dialogues (one turn of every dialogue in the batch at a time,
`herd.generation.generate_batch`); each dialogue samples from its own generator seeded by
(seed, dialogue index) and drawn from only for its own tokens, so its replies do not depend on
the batch it lands in (up to the rounding of batched matrix products). Finished dialogues go to
OUT.partial as they complete; a rerun with the same settings continues from it,
and OUT itself is written once, atomically, at the end.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from herd.atomic_files import file_sha256, write_file_atomically
from herd.data.chat_data import TOOL_ROLES, check_messages, read_rows, require_chat_format
from herd.errors import HerdError
from herd.generation import generate_batch

HOBBIES = ["tennis", "chess", "gardening", "photography", "rock climbing", "baking", "astronomy",
           "jazz", "knitting", "sailing", "birdwatching", "painting", "cycling", "poetry"]  # fmt: skip
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish",
             "Polish", "Turkish", "Indonesian"]  # fmt: skip
FIGURES = ["Napoleon", "Marie Curie", "Albert Einstein", "Cleopatra", "Leonardo da Vinci",
           "Ada Lovelace", "Charles Darwin", "Frida Kahlo", "Nelson Mandela", "Shakespeare"]  # fmt: skip
# (category, verbose template, short template): the short form is the paper's "Figure: Napoleon."
TEMPLATES = {
    "hobby": (HOBBIES, "You enjoy {}, and it shows in every answer.", "Hobby: {}."),
    "language": (LANGUAGES, "Always answer in {}.", "Language: {}."),
    "figure": (FIGURES, "Always act as {} from now on.", "Figure: {}."),
}


def synthetic_instructions(n: int, seed: int = 0, max_parts: int = 2) -> list[str]:
    """`n` instructions, each 1 to `max_parts` constraints of different categories, each part
    verbose or (half of the time) shortened, as Llama 2 section 3.3 builds them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, min(max_parts, len(TEMPLATES)))
        parts = []
        for category in rng.sample(sorted(TEMPLATES), k):
            values, verbose, short = TEMPLATES[category]
            parts.append((short if rng.random() < 0.5 else verbose).format(rng.choice(values)))
        out.append(" ".join(parts))
    return out


def read_instructions(path: str | Path) -> list[str]:
    """Instructions of a text file, one per line (blank lines and lines starting with # skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HerdError(f"{path}: no such instructions file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: unreadable instructions file ({e})") from None
    lines = [x.strip() for x in text.splitlines()]
    found = [x for x in lines if x and not x.startswith("#")]
    if not found:
        raise HerdError(f"{path}: holds no instruction (expected one instruction per line)")
    return found


def with_instruction(text: str, instruction: str) -> str:
    return f"{text}\n\n{instruction}"


@dataclass
class Dialogue:
    """The user turns of an input dialogue (its own replies are discarded), its system message."""

    source: str  # FILE:LINE
    system: str | None
    users: list[str]


def read_dialogues(path: str | Path, chat_format: str) -> list[Dialogue]:
    """Every dialogue of `path` (JSONL/Parquet rows of `messages`, herd's SFT format); the first
    malformed row is a HerdError naming its FILE:LINE, before any model work is done."""
    if not Path(path).exists():
        raise HerdError(f"{path}: no such dialogues file")
    out = []
    for where, row in read_rows(path):
        try:
            if isinstance(row, Exception):
                raise ValueError(str(row))
            if not isinstance(row, dict) or "messages" not in row:
                raise ValueError("expected an object with a 'messages' list")
            messages = check_messages(row["messages"], chat_format)
            if any(m["role"] in TOOL_ROLES for m in messages):
                raise ValueError("has tool turns; GAtt regenerates replies, which would not match")
        except ValueError as e:
            raise HerdError(f"{where}: {e}") from None
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        out.append(Dialogue(where, system, [m["content"] for m in messages if m["role"] == "user"]))
    if not out:
        raise HerdError(f"{path}: holds no dialogue")
    return out


def sampling_messages(d: Dialogue, instruction: str, replies: list[str]) -> list[dict]:
    """The context of the next reply: the instruction beside every user turn (section 3.3)."""
    messages = [{"role": "system", "content": d.system}] if d.system else []
    for i, user in enumerate(d.users[: len(replies) + 1]):
        messages.append({"role": "user", "content": with_instruction(user, instruction)})
        if i < len(replies):
            messages.append({"role": "assistant", "content": replies[i]})
    return messages


def training_rows(
    d: Dialogue,
    instruction: str,
    replies: list[str],
    placement: str = "system",
    every_turn: bool = False,
) -> list[list[dict]]:
    """The SFT rows of a sampled dialogue: the instruction in the first turn only, and "weight": 0
    on every assistant reply but the row's last (section 3.3's zeroed loss on previous turns)."""
    if placement not in ("system", "first-user"):
        raise HerdError(f"placement {placement!r}: expected 'system' or 'first-user'")
    ends = range(1, len(replies) + 1) if every_turn else [len(replies)]
    rows = []
    for end in ends:
        messages = []
        if placement == "system":
            system = f"{d.system}\n\n{instruction}" if d.system else instruction
            messages.append({"role": "system", "content": system})
        elif d.system:
            messages.append({"role": "system", "content": d.system})
        for i in range(end):
            user = d.users[i]
            if i == 0 and placement == "first-user":
                user = with_instruction(user, instruction)
            messages.append({"role": "user", "content": user})
            reply = {"role": "assistant", "content": replies[i]}
            if i < end - 1:
                reply["weight"] = 0
            messages.append(reply)
        rows.append(messages)
    return rows


def _resume(partial: Path, header: dict) -> dict[int, dict]:
    """The dialogues an interrupted run finished, by index; OUT.partial rewritten to hold just
    them (a line cut by the interruption dropped) and `header`, ready for appending."""
    finished: dict[int, dict] = {}
    if partial.exists():
        lines = partial.read_text(encoding="utf-8").splitlines()
        try:
            found = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            found = None
        if found != header:
            raise HerdError(
                f"{partial}: left by a run with other settings; rerun with those or delete it"
            )
        for line in lines[1:]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written when the run stopped
            finished[record["index"]] = record
    text = "".join(json.dumps(x) + "\n" for x in [header, *finished.values()])
    write_file_atomically(partial, lambda f: f.write(text.encode()))
    return finished


def build_gatt(
    model,
    tok,
    dialogues: list[Dialogue],
    instructions: list[str],
    out: str | Path,
    seed: int = 0,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_p: float = 0.95,
    batch_size: int = 8,
    placement: str = "system",
    every_turn: bool = False,
    keep_unfinished: bool = False,
    settings: dict | None = None,
    progress: bool = True,
) -> dict:
    """Sample every dialogue's replies, write its GAtt rows to `out`; counts of what happened:
    dialogues; rows written; dialogues dropped as too long for the model's context even at their
    first turn, and cut short before the first turn that does not fit (kept with the turns
    before it); rows dropped for an empty reply or an unfinished trained reply.

    `settings` (what the samples depend on) identifies the run in OUT.partial: a rerun continues
    from it only when they match.
    """
    from tqdm import tqdm

    require_chat_format(tok)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    header = {"gatt_partial": 1, **(settings or {})}
    finished = _resume(partial, header)
    stop_ids = set(tok.stop_ids)
    if tok.eos_id is not None:
        stop_ids.add(tok.eos_id)
    todo = [i for i in range(len(dialogues)) if i not in finished]
    with open(partial, "a", encoding="utf-8") as log:
        bar = tqdm(
            total=len(dialogues),
            initial=len(finished),
            unit="dialogue",
            desc="gatt",
            disable=None if progress else True,
        )
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for record in _sample_dialogues(
                model,
                tok,
                dialogues,
                instructions,
                batch,
                seed,
                max_new_tokens,
                temperature,
                top_p,
                stop_ids,
            ):
                finished[record["index"]] = record
                log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(len(batch))
        bar.close()
    counts = {"dialogues": len(dialogues), "rows": 0, "too_long": 0, "cut": 0, "empty": 0,
              "unfinished": 0}  # fmt: skip
    lines = []
    for i in range(len(dialogues)):
        r, d = finished[i], dialogues[i]
        if not r["replies"]:
            counts["too_long"] += 1
            continue
        counts["cut"] += len(r["replies"]) < len(d.users)
        meta = {"instruction": r["instruction"], "source": d.source}
        n = len(r["replies"])
        rows = training_rows(d, r["instruction"], r["replies"], placement, every_turn)
        for end, messages in zip(range(n - len(rows), n), rows, strict=True):
            if not all(r["replies"][: end + 1]):  # an empty reply is no message SFT can read
                counts["empty"] += 1
            elif not (r["finished"][end] or keep_unfinished):
                counts["unfinished"] += 1
            else:
                lines.append(json.dumps({"messages": messages, "gatt": meta}, ensure_ascii=False))
    counts["rows"] = len(lines)
    write_file_atomically(out, lambda f: f.write("".join(x + "\n" for x in lines).encode()))
    partial.unlink()
    return counts


def _sample_dialogues(
    model,
    tok,
    dialogues,
    instructions,
    batch,
    seed,
    max_new_tokens,
    temperature,
    top_p,
    stop_ids,
) -> list[dict]:
    """One record per dialogue of `batch`: its instruction, sampled replies and whether each
    ended with a stop token; the replies stop before the first turn whose prompt and reply would
    not fit the model's context."""
    device = model.embed.weight.device
    records = {}
    gens = {}
    for i in batch:
        rng = random.Random(f"{seed}:{i}")  # the instruction depends on the dialogue, not the batch
        records[i] = {
            "index": i,
            "instruction": rng.choice(instructions),
            "replies": [],
            "finished": [],
        }
        gens[i] = torch.Generator(device=device).manual_seed(rng.getrandbits(63))
    for turn in range(max(len(dialogues[i].users) for i in batch)):
        active, prompts = [], []
        for i in batch:
            r, d = records[i], dialogues[i]
            if turn >= len(d.users) or len(r["replies"]) < turn:  # done, or cut
                continue
            messages = sampling_messages(d, r["instruction"], r["replies"])
            ids = tok.encode_dialog(messages, add_generation_prompt=True).ids
            if len(ids) + max_new_tokens > model.config.max_seq_len:
                continue  # this turn and later ones do not fit: the dialogue ends before it
            active.append(i)
            prompts.append(ids)
        if not active:
            break
        sampled = generate_batch(
            model, prompts, max_new_tokens, temperature, top_p,
            stop_ids=sorted(stop_ids), generators=[gens[i] for i in active],
        )  # fmt: skip
        for i, ids in zip(active, sampled, strict=True):
            ended = bool(ids) and ids[-1] in stop_ids
            content = ids[:-1] if ended else ids
            records[i]["replies"].append(tok.decode(content, skip_special=True).strip())
            records[i]["finished"].append(ended)
    return [records[i] for i in batch]


def sampling_settings(args, instructions: list[str]) -> dict:
    """What the samples depend on: OUT.partial's header (batch size and output options are not)."""
    import hashlib

    return {
        "dialogues": str(Path(args.dialogues).resolve()),
        "dialogues_sha256": file_sha256(Path(args.dialogues)),
        "instructions": hashlib.sha256("\n".join(instructions).encode()).hexdigest(),
        "model": str(Path(args.model).resolve()),
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
    }


def run_gatt(args) -> None:
    """`herd gatt --dialogues F [--instructions F] --model CKPT --out SFT.jsonl ...`."""
    import sys

    from herd.checkpoint.loading import load_for_command
    from herd.tokenizer import find_tokenizer, load_tokenizer

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise HerdError("--max-new-tokens and --batch-size must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise HerdError(
            f"--temperature {args.temperature} --top-p {args.top_p}: expected a temperature "
            ">= 0 and 0 < top-p <= 1"
        )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise HerdError(f"{out}: already exists (pass --overwrite to replace it)")
    if args.instructions:
        instructions = read_instructions(args.instructions)
    else:
        instructions = synthetic_instructions(1000, args.seed)
    if not Path(args.model).exists():
        raise HerdError(f"{args.model}: no such checkpoint")
    if find_tokenizer(Path(args.model)) is None:
        raise HerdError(f"{args.model}: no tokenizer file, which GAtt needs for its chat format")
    dialogues = read_dialogues(args.dialogues, require_chat_format(load_tokenizer(args.model)))
    model, tok, _ = load_for_command(args.model, args.device, args.dtype, "for the chat format")
    settings = sampling_settings(args, instructions)
    counts = build_gatt(
        model.eval(), tok, dialogues, instructions, out, args.seed, args.max_new_tokens,
        args.temperature, args.top_p, args.batch_size, args.placement, args.every_turn,
        args.keep_unfinished, settings,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"out": str(out), **counts}))
    print(
        f"gatt: wrote {counts['rows']} rows from {counts['dialogues']} dialogues to {out}; "
        f"dialogues too long for the context: {counts['too_long']} dropped, {counts['cut']} cut "
        f"to the turns that fit; rows dropped: {counts['empty']} with an empty reply, "
        f"{counts['unfinished']} whose trained reply hit --max-new-tokens",
        file=sys.stderr,
    )
