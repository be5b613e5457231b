"""herd/serve/constraints.py: sampling a random model through the grammar mask gives valid JSON.

A randomly initialised model samples close to uniformly from the vocabulary, so without the mask
its output is never JSON; every sample below that parses and validates does so because of the
mask. A Llama 3 vocabulary (128k tokens, tiktoken), Llama 2's (sentencepiece, byte fallback) and a
small byte-level BPE trained by herd are used, as their token bytes come from different backends.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

import herd
from herd.model.cache import KVCache
from herd.serve.constraints import for_response_format, response_format_grammar
from herd.tokenizer.base import replace_lone_surrogates
from herd.vocab.bpe import train_bpe
from tests import references
from tests.tokenizer_corpus import CORPUS

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "scores": {
            "type": "array",
            "items": {"type": "integer", "minimum": -5, "maximum": 5},
            "minItems": 1,
            "maxItems": 4,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "scores"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
SAMPLES = 24
MAX_TOKENS = 200


@pytest.fixture(autouse=True)
def one_thread():
    """A dim-64 model's decode step is a few microseconds of arithmetic: on shared cores, waking
    a second thread costs more than it saves (10x slower here), so these tests decode on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama3():
    return herd.load_tokenizer(references.llama3_tokenizer())


@pytest.fixture(scope="module")
def llama2():
    return herd.load_tokenizer(references.llama2_tokenizer())


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    (root / "corpus.txt").write_text(replace_lone_surrogates("\n".join(CORPUS)), encoding="utf-8")
    return herd.load_tokenizer(train_bpe([root / "corpus.txt"], 400, root / "tok", False, False))


def tiny_model(vocab_size: int):
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, ffn_dim=128,
        max_seq_len=512,
    )  # fmt: skip
    return herd.build_model(config, seed=0).eval()


@torch.no_grad()
def sample(model, tok, constraint, seed: int, max_tokens: int = MAX_TOKENS) -> list[int]:
    """Temperature-1 sampling of a reply over a KV cache, masked by `constraint` when given."""
    generator = torch.Generator().manual_seed(seed)
    prompt = tok.encode_dialog([{"role": "user", "content": "Describe a person as JSON."}]).ids
    cache = KVCache(model.config, 1, len(prompt) + max_tokens, "cpu", torch.float32)
    vocab = model.config.vocab_size
    logits = model(torch.tensor([prompt]), torch.arange(len(prompt)), cache)[0, -1]
    reply: list[int] = []
    while len(reply) < max_tokens:
        if constraint is not None:
            logits = logits.masked_fill(~constraint.allowed(vocab), float("-inf"))
        token = int(torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=generator))
        if token in tok.stop_ids:
            break
        reply.append(token)
        if constraint is not None:
            constraint.advance(token)
            if constraint.finished():
                break
        pos = torch.tensor([len(prompt) + len(reply) - 1])
        logits = model(torch.tensor([[token]]), pos, cache)[0, -1]
    return reply


@pytest.mark.parametrize("which", ["llama3", "llama2", "bpe"])
def test_schema_samples_parse_and_validate(which, request):
    tok = request.getfixturevalue(which)
    # A model vocabulary padded past the tokenizer's: the extra ids must never be allowed.
    model = tiny_model(tok.vocab_size + 64)
    grammar = response_format_grammar(SCHEMA_FORMAT, tok)
    unconstrained = tok.decode(sample(model, tok, None, seed=0, max_tokens=30))
    with pytest.raises(json.JSONDecodeError):
        json.loads(unconstrained)
    outputs = []
    for seed in range(SAMPLES):
        constraint = grammar.start()
        reply = sample(model, tok, constraint, seed)
        assert constraint.finished(), f"sample {seed} ran to {MAX_TOKENS} tokens"
        outputs.append(tok.decode(reply))
        value = json.loads(outputs[-1])
        jsonschema.validate(value, SCHEMA)
    assert len(set(outputs)) > SAMPLES // 2  # sampled, not one forced string


def test_finished_allows_only_stop_tokens(llama3):
    constraint = for_response_format(SCHEMA_FORMAT, llama3)
    vocab = llama3.vocab_size + 8
    stops = set(llama3.stop_ids)
    start = constraint.allowed(vocab)
    assert not any(start[i] for i in stops)  # nothing is complete before the object is
    assert not start[llama3.vocab_size :].any()
    text = (
        '{"name": "Ada", "age": 36, "role": "admin", "address": {"city": "London"}, "scores": [5]}'
    )
    ids = llama3.encode(text)
    for i in ids[:-1]:
        assert constraint.allowed(vocab)[i]
        constraint.advance(i)
        assert not constraint.finished()
    constraint.advance(ids[-1])
    assert constraint.finished() and constraint.accepting()
    assert set(constraint.allowed(vocab).nonzero().flatten().tolist()) == stops
    constraint.advance(llama3.special_tokens["<|eot_id|>"])  # ending on a stop token is fine


def test_json_object_mode(bpe):
    grammar = response_format_grammar({"type": "json_object"}, bpe)
    constraint = grammar.start()
    for rejected in ("[1, 2]", '"text"', "42"):
        assert not constraint.allowed(bpe.vocab_size)[bpe.encode(rejected)[0]], rejected
    for i in bpe.encode('{"a": [1, {"b": null}], "c": "d"}'):
        assert not constraint.finished()
        constraint.advance(i)
    assert constraint.finished()
    # A random model writes an object: every sampled token is allowed (advance would raise), the
    # output starts an object and, when the grammar closes it, parses as one.
    model = tiny_model(bpe.vocab_size)
    for seed in range(3):
        constraint = grammar.start()
        text = bpe.decode(sample(model, bpe, constraint, seed, max_tokens=60))
        assert text.startswith("{")
        if constraint.finished():
            assert isinstance(json.loads(text), dict)


def test_clones_are_independent(bpe):
    constraint = for_response_format({"type": "json_object"}, bpe)
    constraint.advance(bpe.encode("{")[0])
    twin = constraint.clone()
    for i in bpe.encode("}"):
        constraint.advance(i)
    assert constraint.finished() and not twin.finished()
    for i in bpe.encode('"k": 1}'):
        twin.advance(i)
    assert twin.finished()


def test_disallowed_token_raises(bpe):
    constraint = for_response_format({"type": "json_object"}, bpe)
    with pytest.raises(RuntimeError, match="not allowed"):
        constraint.advance(bpe.encode("x")[0])


def test_text_is_unconstrained(bpe):
    assert for_response_format({"type": "text"}, bpe) is None
    assert for_response_format(None, bpe) is None


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        ("json", "response_format"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
            "response_format.json_schema.strict",
        ),
        *[
            (
                {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                "response_format.json_schema.schema",
            )
            for schema in (
                {"type": "nope"},
                {"$ref": "#/definitions/missing"},
                {"type": "string", "pattern": "("},
                {"type": "integer", "minimum": 5, "maximum": 1},
                ["not", "an", "object"],
            )
        ],
    ],
)
def test_bad_response_format_is_one_line_value_error(bpe, response_format, field):
    with pytest.raises(ValueError) as caught:
        for_response_format(response_format, bpe)
    message = str(caught.value)
    assert message.startswith(field + ":") and "\n" not in message, message
