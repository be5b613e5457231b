"""Users' feedback on agent replies turned into training data, as BB3x did with its deployment
feedback (Xu et al. 2022) and Llama 2-Chat with its preference data:

- a reply rated good becomes an SFT row (`herd sft`): its prompt and the reply;
- a reply rated bad becomes a DPO pair (`herd dpo`): the reply is the rejected side, and the chosen
  side is the user's correction (`/fix TEXT` in the REPL, `correction` in the server's feedback
  endpoint) or, with a model, a regenerated reply that differs from the bad one. A bad reply with
  neither is counted and left out.

The prompt of each row is, by default, what the model actually answered: the response module's
messages from the turn's trace (the system prompt, the dialogue, the knowledge the modules found
and any tool calls and results), so training data matches how the agent uses the model.
`context="dialogue"` exports the plain conversation instead. Turns where the guard stepped in are
left out: their reply is the refusal, not the model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.agent.traces import TurnLog, TurnRecord
from herd.atomic_files import write_file_atomically
from herd.errors import HerdError

REGENERATE_TRIES = 4
REGENERATE_TEMPERATURE = 1.0


def turn_prompt(record: TurnRecord, context: str = "module") -> list[dict]:
    """The messages the reply answered: the last response call's prompt (module) or the dialogue."""
    if context not in ("module", "dialogue"):
        raise HerdError(f"feedback context {context!r}: expected 'module' or 'dialogue'")
    if context == "module":
        calls = [t for t in record.trace.get("modules", []) if t.get("module") == "response"]
        if calls:
            return [dict(m) for m in calls[-1]["messages"]]
    return [dict(m) for m in record.context]


def _regenerate(chat, prompt: list[dict], bad: str) -> str | None:
    from herd.agent.modules import parse_response
    from herd.agent.tool_calls import decode_reply

    for _ in range(REGENERATE_TRIES):
        out = chat.complete(prompt, 256, REGENERATE_TEMPERATURE)
        decoded = decode_reply(out.text)
        if decoded.wants_tool:
            continue
        text = parse_response(decoded.content)
        if text and text.strip() != bad.strip():
            return text
    return None


def export_feedback(
    log: TurnLog,
    *,
    sft: str | Path | None = None,
    dpo: str | Path | None = None,
    user: str | None = None,
    context: str = "module",
    chat=None,
) -> dict:
    """Write the SFT rows (good replies) and DPO rows (bad replies) of the rated turns; counts of
    what was written and what was left out, and why. `chat`: a ChatModel that regenerates the
    chosen side for bad replies without a correction."""
    if sft is None and dpo is None:
        raise HerdError("feedback export: give --sft and/or --dpo (where to write)")
    sft_rows, dpo_rows = [], []
    counts = {"good": 0, "bad": 0, "flagged": 0, "corrected": 0, "regenerated": 0, "no_chosen": 0}
    for record in log.turns(user=user, rated=True):
        if record.flagged:
            counts["flagged"] += 1
            continue
        prompt = turn_prompt(record, context)
        if record.rating == 1:
            counts["good"] += 1
            sft_rows.append({"messages": [*prompt, {"role": "assistant", "content": record.reply}],
                             "turn": record.id})  # fmt: skip
            continue
        counts["bad"] += 1
        chosen = record.correction
        if chosen:
            counts["corrected"] += 1
        elif chat is not None:
            chosen = _regenerate(chat, prompt, record.reply)
            counts["regenerated" if chosen else "no_chosen"] += 1
        else:
            counts["no_chosen"] += 1
        if chosen and record.reply.strip():
            dpo_rows.append({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": record.reply}],
                "turn": record.id,
                "feedback": record.feedback,
            })  # fmt: skip
    for path, rows in ((sft, sft_rows), (dpo, dpo_rows)):
        if path is not None:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            write_file_atomically(Path(path), lambda f, t=text: f.write(t.encode("utf-8")))
    return {**counts, "sft_rows": len(sft_rows), "dpo_rows": len(dpo_rows)}
