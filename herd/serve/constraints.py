"""Output constrained by a grammar: OpenAI `response_format` (JSON mode, JSON Schema) for serving.

The grammar engine is llguidance (Microsoft's, the one behind guidance, vLLM and llama.cpp's JSON
modes): it compiles a JSON Schema to a context-free grammar over bytes and, at each step, computes
which tokens of the vocabulary may come next from a trie of the tokens' bytes, in tens of
microseconds for a 128k vocabulary. It is built here from the bytes of each herd token
(herd/tokenizer/token_strings.py), so the Llama 3, Llama 2 and Hugging Face tokenizers all work
the same way.

The engine holds one `Constraint` per generated sequence and, each step: masks the logits with
`allowed(vocab_size)`, samples, calls `advance(token)`, and stops when `finished()`. The tokenizer's
stop tokens (<|eot_id|>, </s>, ...) are allowed exactly when the grammar accepts the output so far,
so a sequence can end only on a complete JSON value; once nothing but a stop token may follow,
`finished()` is true.

JSON is written compactly with OpenAI's separators (", " and ": ") and no other whitespace: a
grammar that allows free whitespace lets a weak model emit newlines forever, a known failure of
JSON modes. A schema may change this through llguidance's "x-guidance" key (whitespace_flexible).
"""

from __future__ import annotations

import json
import weakref

import numpy as np
import torch

from herd.tokenizer.base import Tokenizer
from herd.tokenizer.token_strings import token_strings

# llguidance's JSON compiler options, applied before a schema's own "x-guidance" key.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Building a vocabulary trie takes ~0.1-1 s for 128k tokens: once per tokenizer object.
_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def llg_tokenizer(tok: Tokenizer):
    """The llguidance view of `tok` (token bytes, special tokens, stop tokens), cached per `tok`."""
    if tok not in _VOCABULARIES:
        import llguidance

        strings = token_strings(tok)
        names = {i: name for name, i in tok.special_tokens.items()}
        # llguidance marks special tokens with a leading 0xFF byte (never valid UTF-8): a grammar
        # can then name them, and no text can ever produce them.
        tokens = [b"\xff" + names[i].encode() if i in names else s for i, s in enumerate(strings)]
        stops = tok.stop_ids or ([tok.eos_id] if tok.eos_id is not None else [])
        if not stops:
            raise ValueError(f"{tok.path}: a constrained output needs a stop token (EOS)")
        wrapper = llguidance.TokenizerWrapper(_TokenSource(tok, tokens, sorted(names), stops[0]))
        _VOCABULARIES[tok] = llguidance.LLTokenizer(wrapper, eos_token=list(stops))
    return _VOCABULARIES[tok]


class _TokenSource:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, and text -> ids.

    llguidance tokenizes text through this and expects the ids to spell exactly that text's bytes.
    sentencepiece does not (it prepends a space, "▁", to every input), and llguidance then masks
    out everything; so an encoding that does not spell the text is replaced by a greedy
    longest-match over the vocabulary, which always does.
    """

    def __init__(self, tok: Tokenizer, tokens: list[bytes], special: list[int], eos: int) -> None:
        self._tok = tok
        self.tokens = tokens
        self.special_token_ids = special
        self.eos_token_id = eos
        self.bos_token_id = tok.bos_id
        skip = set(special)
        # Later ids win: sentencepiece lists its byte pieces before the merged pieces.
        self._ids = {t: i for i, t in enumerate(tokens) if t and i not in skip}
        self._longest = max(map(len, self._ids))

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # the wrapper probes with bytes: strings only here
            raise TypeError("text must be a str")
        ids = self._tok.encode(text)
        data = text.encode("utf-8", "surrogatepass")
        if b"".join(self.tokens[i] for i in ids) == data:
            return ids
        return self._greedy(data)

    def _greedy(self, data: bytes) -> list[int]:
        ids, at = [], 0
        while at < len(data):
            for n in range(min(self._longest, len(data) - at), 0, -1):
                if data[at : at + n] in self._ids:
                    ids.append(self._ids[data[at : at + n]])
                    at += n
                    break
            else:  # a byte no token spells (a vocabulary without byte fallback): skipped
                at += 1
        return ids


class Grammar:
    """A compiled grammar over one tokenizer's vocabulary; `start()` gives a fresh Constraint."""

    def __init__(self, grammar: str, tok: Tokenizer, what: str) -> None:
        import llguidance

        self.tokenizer = llg_tokenizer(tok)
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(f"{what}: {_one_line(error)}")
        self._grammar = grammar

    def start(self) -> Constraint:
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer, self._grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(_one_line(matcher.get_error()))
        return Constraint(matcher, self.tokenizer.vocab_size)


class Constraint:
    """The grammar state of one generated sequence."""

    def __init__(self, matcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """BoolTensor [vocab_size]: the tokens that may come next. Ids past the tokenizer's
        vocabulary (a model's embedding table is often padded) are never allowed."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[: self._vocab_size].astype(bool)
        out = torch.zeros(vocab_size, dtype=torch.bool)
        n = min(vocab_size, self._vocab_size)
        out[:n] = torch.from_numpy(mask[:n])
        return out

    def advance(self, token_id: int) -> None:
        """Consume the sampled token; RuntimeError when the grammar did not allow it."""
        if not self._matcher.consume_token(int(token_id)):
            raise RuntimeError(
                f"token {int(token_id)} is not allowed here: {_one_line(self._matcher.get_error())}"
            )

    def accepting(self) -> bool:
        """The output so far is complete (a stop token may end it here)."""
        return self._matcher.is_accepting()

    def finished(self) -> bool:
        """Nothing but a stop token may follow: generation must stop."""
        return self._matcher.is_stopped()

    def clone(self) -> Constraint:
        """An independent copy of this state (for n > 1 samples from one prompt)."""
        return Constraint(self._matcher.deep_copy(), self._vocab_size)


def json_schema_grammar(schema: dict, tok: Tokenizer, what: str = "schema") -> Grammar:
    """A Grammar whose outputs are JSON values valid against `schema`; ValueError naming `what`."""
    import llguidance

    if not isinstance(schema, dict):
        raise ValueError(f"{what}: expected a JSON Schema object, got {type(schema).__name__}")
    try:
        text = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults=JSON_OPTIONS
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what}: {_one_line(str(e))}") from None
    return Grammar(text, tok, what)


def for_response_format(response_format: dict | None, tok: Tokenizer) -> Constraint | None:
    """A Constraint for OpenAI's `response_format`, or None for plain text.

    {"type": "text"} -> None; {"type": "json_object"} -> any JSON object;
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}} -> a
    JSON value valid against the schema. A malformed request is a ValueError naming the field.
    """
    grammar = response_format_grammar(response_format, tok)
    return None if grammar is None else grammar.start()


def response_format_grammar(response_format: dict | None, tok: Tokenizer) -> Grammar | None:
    """The compiled Grammar behind `for_response_format` (compile once, `start()` per sample)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format: expected an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"}, tok, "response_format")
    if kind != "json_schema":
        raise ValueError(
            f"response_format.type: {kind!r} is not one of 'text', 'json_object', 'json_schema'"
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise ValueError("response_format.json_schema: expected an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("response_format.json_schema.name: expected a non-empty string")
    if "strict" in spec and not isinstance(spec["strict"], bool | None):
        raise ValueError("response_format.json_schema.strict: expected a boolean")
    # OpenAI makes "schema" optional; without it any JSON value is valid.
    schema = spec.get("schema", {})
    return json_schema_grammar(schema, tok, "response_format.json_schema.schema")


def _one_line(message: str) -> str:
    return " ".join(message.split())
