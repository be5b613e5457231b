"""Llama Guard 3's prompt and the parser of its answers.

The prompt is one Llama 3 user turn (the released Hugging Face chat template, Llama-Guard-3-8B):
the task naming the role to check, the policy's categories between <BEGIN UNSAFE CONTENT
CATEGORIES> and <END UNSAFE CONTENT CATEGORIES>, the conversation as "User: ..." / "Agent: ..."
turns (content stripped, each followed by a blank line) between <BEGIN CONVERSATION> and <END
CONVERSATION>, and the instruction to assess only the last message of that role. The role is
"User" when the conversation ends with the user's message and "Agent" when it ends with the
assistant's; roles alternate, starting with the user. "according our safety policy" is the
released wording (sic).

The model answers after the assistant header: "\\n\\n" then "safe", or "unsafe" and a second line
of violated codes ("S1,S10"), then <|eot_id|>. herd's Llama 3 chat format puts that "\\n\\n" in
the assistant header (as Meta's reference formatter does), so a guard's prompt ids are
`encode_dialog([{"role": "user", "content": guard_task(...)}])` and the first token the model
writes is "safe" or "unsafe": the unsafe probability is read from that one position.

`render_prompt` gives the whole text up to the assistant header, as the released template
renders it (without the space the 8B template's Jinja puts before <|begin_of_text|>, which
Meta's reference prompt and the 1B template do not have): the golden strings of the tests
compare with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from herd.errors import HerdError
from herd.guard.policy import CODE_PATTERN, Policy

ROLE_NAMES = {"user": "User", "assistant": "Agent"}
TASK = (
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our "
    "safety policy with the below categories.\n\n"
)
INSTRUCTION = (
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)


def check_conversation(messages: object, where: str = "conversation") -> list[dict]:
    """The messages, checked: a non-empty list of {"role": "user"|"assistant", "content": str}
    alternating from the user's (the released template raises on anything else)."""
    if not isinstance(messages, list) or not messages:
        raise HerdError(f"{where}: expected a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLE_NAMES:
            role = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise HerdError(f"{where}: message {i} has role {role!r}, expected user or assistant")
        if not isinstance(m.get("content"), str):
            raise HerdError(f"{where}: message {i} content must be a string")
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise HerdError(
                f"{where}: message {i} is the {m['role']}'s; roles must alternate "
                "user/assistant/user/... starting with the user"
            )
    return messages


def select_role(messages: list[dict], role: str | None, where: str = "conversation") -> list[dict]:
    """The conversation up to the message to assess: the last one (role None), or the last of
    `role` ("user" or "agent"), what came after it left out."""
    if role is None:
        return messages
    wanted = {"user": "user", "agent": "assistant"}.get(role)
    if wanted is None:
        raise HerdError(f"role {role!r}: expected user or agent")
    last = max((i for i, m in enumerate(messages) if m["role"] == wanted), default=None)
    if last is None:
        raise HerdError(f"{where}: has no {role} message to assess")
    return messages[: last + 1]


def guard_task(messages: list[dict], policy: Policy) -> str:
    """The content of the guard's one user turn for `messages` (checked) under `policy`."""
    check_conversation(messages)
    role = ROLE_NAMES[messages[-1]["role"]]
    turns = "".join(f"{ROLE_NAMES[m['role']]}: {m['content'].strip()}\n\n" for m in messages)
    return (
        TASK.format(role=role)
        + "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + policy.render()
        + "<END UNSAFE CONTENT CATEGORIES>\n\n"
        + "<BEGIN CONVERSATION>\n\n"
        + turns
        + "<END CONVERSATION>\n\n"
        + INSTRUCTION.format(role=role)
    )


def render_prompt(messages: list[dict], policy: Policy) -> str:
    """The whole prompt text, special tokens written out, up to the assistant header."""
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        + guard_task(messages, policy)
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )


def target_text(label: str, categories: list[str] | tuple[str, ...]) -> str:
    """What a guard is trained to answer: "safe", or "unsafe" and the codes' line."""
    if label == "safe":
        return "safe"
    if label != "unsafe":
        raise HerdError(f"label {label!r}: expected safe or unsafe")
    return "unsafe\n" + ",".join(categories) if categories else "unsafe"


@dataclass(frozen=True)
class Verdict:
    label: str | None  # "safe", "unsafe", or None when the text follows neither form
    categories: tuple[str, ...] = ()
    problem: str = ""  # why the text is malformed ("" when well formed)


def parse_verdict(text: str) -> Verdict:
    """The verdict in a guard's answer: leading whitespace (the "\\n\\n" it starts with) and a
    trailing end of line are allowed; a first line other than safe / unsafe, text after "safe",
    or a second line that is not comma-separated codes (S1,S10) is malformed."""
    lines = text.strip().split("\n")
    head = lines[0].strip()
    if head == "safe":
        if len(lines) > 1:
            return Verdict(None, (), "text after 'safe'")
        return Verdict("safe")
    if head != "unsafe":
        return Verdict(None, (), f"first line {head[:40]!r} is neither 'safe' nor 'unsafe'")
    if len(lines) == 1:
        return Verdict("unsafe")  # no category line: unsafe, categories unknown
    if len(lines) > 2:
        return Verdict("unsafe", (), "more than two lines")
    codes = [c.strip() for c in lines[1].split(",")]
    bad = next((c for c in codes if not CODE_PATTERN.fullmatch(c)), None)
    if bad is not None:
        return Verdict("unsafe", (), f"category {bad[:20]!r} is not a code such as S1")
    return Verdict("unsafe", tuple(dict.fromkeys(codes)))
