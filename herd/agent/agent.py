"""The agent's turn: BlenderBot 3's module pipeline around one chat model, Llama 3.1 tool calls in
its reply, a safety guard around both, every step traced.

A turn (`Agent.respond`), after BB3 (projects/bb3/agents/opt_bb3_agent.py) and Llama 3.1:

1. the guard checks the user's message; an unsafe one gets the refusal and nothing else runs;
2. search decision and memory decision (the memory decision only when this user has notes);
3. a search query, the search backend's passages, one knowledge sentence from them; a note about
   the partner from their message (stored after this turn's recall, so the note just said is not
   "recalled"); the notes retrieved for the message, one picked by the model;
4. the entity ("previous topic") when neither search nor memory gave knowledge;
5. the response, with every piece of knowledge; with tools, the response may call one: a reply
   ending `<|eom_id|>` runs its tool (the guard first checks code for interpreter abuse), the
   result comes back in the `ipython` role and the model goes on, at most `max_tool_steps` times;
6. the guard checks the final reply (an unsafe one is replaced by the refusal);
7. a note about the bot itself from its reply.

Module calls are greedy (decisions and copies); the response and tool steps use the model's
sampling settings. A module whose prompt is too long for the model is retried with fewer turns of
context (BB3 truncated the context the same way); one that still does not fit is skipped and
traced as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from herd.agent import modules as m
from herd.agent.llm import ChatModel, PromptTooLong
from herd.agent.tool_calls import decode_reply
from herd.errors import HerdError
from herd.tokenizer.chat import CODE_INTERPRETER

MODULE_TOKENS = {
    "search_decision": 8,
    "memory_decision": 8,
    "search_query": 32,
    "memory_generator": 48,
    "search_knowledge": 80,
    "memory_knowledge": 48,
    "contextual_knowledge": 16,
}


# A prompt too long for the model is built again with fewer turns of context, these in turn.
FEWER_TURNS = (m.CONTEXT_TURNS, 8, 4, 2, 1)


@dataclass
class AgentConfig:
    response_tokens: int = 256
    max_tool_steps: int = 4  # tool calls per turn before the model must answer
    block_recent: int = 0  # BB3 blocks notes used within this many turns
    retrieve: int = m.PASSAGES  # notes offered to the memory knowledge module
    entity: bool = True
    write_memory: bool = True
    system: str = m.RESPONSE_SYSTEM


@dataclass
class AgentTurn:
    reply: str
    turn: int
    id: int | None = None  # the turn's row in the traces table
    flagged: str | None = None  # "input", "output" or "tool": where the guard stepped in
    decisions: dict = field(default_factory=dict)  # search, memory: what the modules decided
    knowledge: dict = field(default_factory=dict)  # search, memory, entity: what the reply saw
    modules: list[m.ModuleTrace] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)  # each call, its result, its seconds
    seconds: float = 0.0

    def trace(self) -> dict:
        return {
            "decisions": self.decisions,
            "knowledge": self.knowledge,
            "modules": [t.to_dict() for t in self.modules],
            "tools": self.tools,
            "seconds": round(self.seconds, 4),
        }


class Agent:
    """One user's agent: a chat model, and optionally a search backend, a memory store, a guard
    (herd.guard.moderator.Moderator), a toolbox and a turn log (herd.agent.traces.TurnLog)."""

    def __init__(
        self,
        chat: ChatModel,
        *,
        search=None,
        memory=None,
        guard=None,
        toolbox=None,
        log=None,
        config: AgentConfig | None = None,
    ) -> None:
        self.chat, self.search, self.memory, self.guard = chat, search, memory, guard
        self.toolbox, self.log = toolbox, log
        self.config = config or AgentConfig()
        self.turn = log.last_turn() if log is not None else 0

    # -- one module --------------------------------------------------------------------------------

    def _module(self, turn: AgentTurn, name: str, build, parse, context: list[dict]):
        """Run a module: its prompt (fewer context turns until it fits), the model, the parser."""
        began = time.perf_counter()
        for turns in FEWER_TURNS:
            messages = build(context[-turns * 2 :] if turns < m.CONTEXT_TURNS else context)
            try:
                out = self.chat.complete(messages, MODULE_TOKENS[name.split(":")[0]], 0.0)
                break
            except PromptTooLong:
                continue
        else:
            turn.modules.append(
                m.ModuleTrace(name, messages, "", None, time.perf_counter() - began)
            )
            return None
        parsed = parse(out.text)
        shown = parsed.to_dict() if hasattr(parsed, "to_dict") else parsed
        turn.modules.append(m.ModuleTrace(name, messages, out.text, shown, out.seconds))
        return parsed

    # -- the turn ----------------------------------------------------------------------------------

    def respond(self, context: list[dict], response_tokens: int | None = None) -> AgentTurn:
        """The reply to `context` (chat messages ending with the user's), with its trace; the reply
        gets at most `response_tokens` tokens (default: the config's) per generation."""
        began = time.perf_counter()
        limit = response_tokens or self.config.response_tokens
        context = [dict(x) for x in context]
        if not context or context[-1].get("role") != "user":
            raise HerdError("agent context: the last message must be the user's")
        self.turn += 1
        turn = AgentTurn(reply="", turn=self.turn)
        if self.memory is not None:
            self.memory.advance_turn()
        if self.guard is not None and _unsafe(self.guard.check_input_sync(context), turn, "input"):
            turn.reply = self.guard.refusal
            return self._finish(turn, context, began)
        dialogue = [x for x in context if x.get("role") in ("user", "assistant")]
        user_text = context[-1]["content"]

        searched = recalled = False
        if self.search is not None:
            searched = bool(
                self._module(
                    turn,
                    "search_decision",
                    m.build_search_decision_messages,
                    m.parse_search_decision,
                    dialogue,
                )
            )
        notes = []
        if self.memory is not None:
            notes = self.memory.retrieve(
                user_text, self.config.retrieve, block_recent=self.config.block_recent
            )
        if notes:
            recalled = bool(
                self._module(
                    turn,
                    "memory_decision",
                    lambda c: m.build_memory_decision_messages(c, [n.entry for n in notes]),
                    m.parse_memory_decision,
                    dialogue,
                )
            )
        turn.decisions = {"search": searched, "memory": recalled}

        if searched:
            query = self._module(
                turn, "search_query", m.build_search_query_messages, m.parse_search_query, dialogue
            )
            passages = self.search.search(query, m.PASSAGES) if query else []
            turn.knowledge["passages"] = [
                {k: p.get(k) for k in ("title", "text", "url", "score")} for p in passages
            ]
            if passages:
                turn.knowledge["search"] = self._module(
                    turn,
                    "search_knowledge",
                    lambda c: m.build_search_knowledge_messages(c, passages),
                    m.parse_search_knowledge,
                    dialogue,
                )
        partner_note = None
        if self.memory is not None and self.config.write_memory:
            partner_note = self._module(
                turn,
                "memory_generator:partner",
                lambda c: m.build_memory_generator_messages(c, "partner"),
                m.parse_memory_generator,
                dialogue,
            )
        note = None
        if recalled:
            entries = [n.entry for n in notes]
            note = self._module(
                turn,
                "memory_knowledge",
                lambda c: m.build_memory_knowledge_messages(c, entries),
                lambda text: m.parse_memory_knowledge(text, entries),
                dialogue,
            )
            if note is not None:
                self.memory.mark_used([note.id], self.turn)
                turn.knowledge["memory"] = m.note_line(note)
        if partner_note:
            self._remember(turn, partner_note, "partner")
        entity = None
        wanted = m.entity_needed(bool(turn.knowledge.get("search")), note is not None)
        # a first message has no earlier topic to come back to
        if self.config.entity and wanted and len(dialogue) > 1:
            entity = self._module(
                turn,
                "contextual_knowledge",
                m.build_contextual_knowledge_messages,
                lambda text: m.parse_contextual_knowledge(text, dialogue),
                dialogue,
            )
            turn.knowledge["entity"] = entity

        def build(turns: int) -> list[dict]:
            return m.build_response_messages(
                dialogue, search_knowledge=turn.knowledge.get("search"), memory_note=note,
                entity=entity, max_turns=turns, system=self.config.system,
            )  # fmt: skip

        reply = self._reply(turn, context, build, limit)
        checked = self.guard is not None and reply
        if checked and _unsafe(self.guard.check_output_sync(context, reply), turn, "output"):
            reply = self.guard.refusal
        turn.reply = reply
        if self.memory is not None and self.config.write_memory and reply and not turn.flagged:
            said = [*dialogue, {"role": "assistant", "content": reply}]
            own = self._module(
                turn,
                "memory_generator:self",
                lambda c: m.build_memory_generator_messages(c, "self"),
                m.parse_memory_generator,
                said,
            )
            if own:
                self._remember(turn, own, "self")
        return self._finish(turn, context, began)

    def _remember(self, turn: AgentTurn, text: str, speaker: str) -> None:
        why = self.memory.why_rejected(text, speaker)
        added = None if why else self.memory.add(text, speaker, self.turn)
        turn.knowledge.setdefault("notes_written", []).append(
            {"speaker": speaker, "text": text, "id": added, "rejected": why}
        )

    def _reply(self, turn: AgentTurn, context: list[dict], build, limit: int) -> str:
        """The response module (`build(max_turns)` gives its messages), with the Llama 3.1 tool
        loop when there is a toolbox."""
        box = self.toolbox
        for turns in FEWER_TURNS:
            messages = build(turns)
            if box is not None:
                messages = box.prompt(messages)
            try:
                out = self._complete_reply(messages, limit)
                break
            except PromptTooLong:
                if turns == 1:
                    raise
        for step in range(self.config.max_tool_steps + 1):
            if step:
                try:
                    out = self._complete_reply(messages, limit)
                except PromptTooLong:  # tool results filled the context: answer with what we have
                    turn.modules.append(m.ModuleTrace("response", messages, "", None, 0.0))
                    return ""
            decoded = decode_reply(out.text) if box is not None else None
            turn.modules.append(m.ModuleTrace("response", messages, out.text, None, out.seconds))
            if decoded is None or not decoded.wants_tool or step == self.config.max_tool_steps:
                text = (
                    decoded.content if decoded is not None and not decoded.wants_tool else out.text
                )
                reply = m.parse_response(text)
                turn.modules[-1].parsed = reply
                return reply
            calls = list(decoded.tool_calls)
            messages = [*messages, {
                "role": "assistant", "content": "", "stop_reason": "end_of_message",
                "tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls],
            }]  # fmt: skip
            for call in calls:
                if call.name == CODE_INTERPRETER and self.guard is not None:
                    code = str(call.arguments.get("code", ""))
                    if _unsafe(self.guard.check_output_sync(context, code), turn, "tool"):
                        turn.tools.append({"name": call.name, "arguments": call.arguments,
                                           "output": None, "refused": True})  # fmt: skip
                        return self.guard.refusal
                result = box.run(call)
                turn.tools.append({"name": result.name, "arguments": result.arguments,
                                   "output": result.output, "seconds": round(result.seconds, 4),
                                   **result.details})  # fmt: skip
                messages.append({"role": "ipython", "content": result.output})
        raise AssertionError("unreachable")

    def _complete_reply(self, messages: list[dict], limit: int):
        """The reply's generation; a prompt that leaves too little room gets a smaller budget."""
        while True:
            try:
                return self.chat.complete(messages, limit)
            except PromptTooLong:
                if limit <= 32:
                    raise
                limit //= 2

    def _finish(self, turn: AgentTurn, context: list[dict], began: float) -> AgentTurn:
        turn.seconds = time.perf_counter() - began
        if self.log is not None:
            turn.id = self.log.add(self.turn, context, turn.reply, turn.trace(), turn.flagged)
        return turn


def _unsafe(result, turn: AgentTurn, stage: str) -> bool:
    if result is None:
        return False
    turn.knowledge.setdefault("guard", []).append(
        {
            "stage": stage,
            "label": result.label,
            "categories": list(result.categories),
            "unsafe_probability": round(result.unsafe_probability, 4),
        }
    )
    if result.label == "unsafe":
        turn.flagged = stage
        return True
    return False
