"""Tests of herd/data/chat_data.py and herd/posttrain/sft_batches.py: SFT and DPO rows from
JSONL and Parquet, their validation, masks and length rules, and packed SFT batches."""

from __future__ import annotations

import json

import pytest
import torch

import herd
from herd import load_tokenizer
from herd.data.chat_data import (
    check_dpo_row,
    encode_dpo,
    load_dpo,
    load_sft,
    termination_ids,
)
from herd.data.objectives import IGNORE_INDEX
from herd.errors import HerdError
from herd.model.masks import PackedAttention
from herd.posttrain.sft_batches import SFTBatches, pack_dialogues
from herd.tokenizer.chat import encode_dialog
from tests import references

TOOL_DIALOG = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What time is it?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
    },
    {"role": "tool", "content": "12:00"},
    {"role": "assistant", "content": "It is noon."},
]


def _dialog(k: int) -> list[dict]:
    """A small two-turn dialogue whose length grows with k."""
    return [
        {"role": "user", "content": f"Question {k}: " + "why " * (k % 7)},
        {"role": "assistant", "content": f"Answer {k}." + " because" * (k % 5)},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Then " + "more " * (k % 3) + "done."},
    ]


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer(references.llama3_tokenizer())


@pytest.fixture(scope="module")
def llama2():
    return load_tokenizer(references.llama2_tokenizer())


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_sft_example_is_encode_dialog_with_assistant_mask(llama3, tmp_path):
    data = load_sft(llama3, _jsonl(tmp_path / "sft.jsonl", [{"messages": TOOL_DIALOG}]), 512)
    assert data.counts == {"rows": 1, "kept": 1, "malformed": 0, "too_long": 0, "truncated": 0}
    (example,) = data.examples
    expected = encode_dialog(llama3, TOOL_DIALOG, add_generation_prompt=False)
    assert (example.ids, example.mask) == (expected.ids, expected.mask)
    assert example.source == f"{tmp_path / 'sft.jsonl'}:1"
    trained = llama3.decode([t for t, m in zip(example.ids, example.mask, strict=True) if m])
    call = '{"type": "function", "name": "get_time", "parameters": {"tz": "UTC"}}'
    assert trained == call + "<|eot_id|>" + "It is noon.<|eot_id|>"


@pytest.mark.parametrize("name", ["llama3", "llama2"])
def test_dpo_tokenization_continues_the_prompt(name, request):
    tok = request.getfixturevalue(name)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    chosen = [{"role": "assistant", "content": "Hello! How can I help?"}]
    rejected = [{"role": "assistant", "content": "Go away."}]
    ex = encode_dpo(
        tok,
        *check_dpo_row({"prompt": prompt, "chosen": chosen, "rejected": rejected}, tok.chat_format),
    )
    assert ex.prompt_ids == encode_dialog(tok, prompt, add_generation_prompt=True).ids
    for ids, mask, response in (
        (ex.chosen_ids, ex.chosen_mask, chosen),
        (ex.rejected_ids, ex.rejected_mask, rejected),
    ):
        full = encode_dialog(tok, prompt + response, add_generation_prompt=False)
        assert ex.prompt_ids + ids == full.ids
        # the termination token (<|eot_id|> or Llama 2's EOS) ends the response: out of the DPO
        # term (mask 1), in the NLL term (mask 2)
        assert ids[-1] in termination_ids(tok) and mask[-1] == 2
        assert mask.count(2) == 1
        content = tok.decode([t for t, m in zip(ids, mask, strict=True) if m == 1])
        assert content.strip() == response[0]["content"]


def test_dpo_multi_message_response_masks_headers(llama3):
    prompt, response = TOOL_DIALOG[:2], TOOL_DIALOG[2:]
    row = {"prompt": prompt, "chosen": response, "rejected": "I do not know."}
    ex = encode_dpo(llama3, *check_dpo_row(row, "llama3"))
    full = encode_dialog(llama3, TOOL_DIALOG, add_generation_prompt=False)
    assert ex.prompt_ids + ex.chosen_ids == full.ids
    pairs = list(zip(ex.chosen_ids, ex.chosen_mask, strict=True))
    trained = llama3.decode([t for t, m in pairs if m == 1])
    assert trained == '{"type": "function", "name": "get_time", "parameters": {"tz": "UTC"}}' + (
        "It is noon."
    )
    # the assistant's two turn ends (after the JSON tool call and at the end) are in the NLL
    # term only; the tool's turn is in neither
    ends = [llama3.decode([t]) for t, m in pairs if m == 2]
    assert ends == ["<|eot_id|>", "<|eot_id|>"]


def test_dpo_accepted_forms_agree(llama3):
    user = {"role": "user", "content": "Name a colour."}
    good, bad = "Blue.", "Seven."
    forms = [
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        },
        {"prompt": [user], "chosen": {"role": "assistant", "content": good}, "rejected": bad},
        {"prompt": user["content"], "chosen": good, "rejected": bad},
        {
            "chosen": [user, {"role": "assistant", "content": good}],
            "rejected": [user, {"role": "assistant", "content": bad}],
        },
    ]
    examples = [encode_dpo(llama3, *check_dpo_row(f, "llama3")) for f in forms]
    assert all(e == examples[0] for e in examples)


BAD_SFT = [
    ("[1, 2]", "expected an object with a 'messages' list"),
    ("{not json", "not valid JSON"),
    ({"messages": []}, "'messages' must be a non-empty list of messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    (
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]},
        "message 0: the conversation starts with 'assistant', expected 'user'",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        "message 1: two user turns in a row",
    ),
    (
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "c"}]},
        "message 0 (user) has empty content",
    ),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
        "message 1 (assistant) has empty content",
    ),
    ({"messages": [{"role": "robot", "content": "a"}]}, "message 0 has unknown role 'robot'"),
    (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "system", "content": "c"},
            ]
        },
        "message 2: a system message is allowed only first",
    ),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
        "message 1: a tool result must follow an assistant turn",
    ),
    (
        {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]},
        "message 0 (user) content must be a string",
    ),
]


def test_bad_sft_rows_are_reported_with_file_and_line(llama3, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"messages": TOOL_DIALOG}] + [r for r, _ in BAD_SFT])
    data = load_sft(llama3, path, 512)
    assert data.counts["malformed"] == len(BAD_SFT) and data.counts["kept"] == 1
    for line, ((_, why), problem) in enumerate(zip(BAD_SFT, data.problems, strict=True), 2):
        assert problem.startswith(f"{path}:{line}: {why}"), problem
        assert "\n" not in problem
    with pytest.raises(HerdError, match=f"^{path}:2: expected an object"):
        load_sft(llama3, path, 512, strict=True)


def test_llama2_rejects_tool_roles(llama2, tmp_path):
    path = _jsonl(tmp_path / "tools.jsonl", [{"messages": TOOL_DIALOG}])
    data = load_sft(llama2, path, 512)
    assert data.problems == [
        f"{path}:1: message 3 has role 'tool', but Llama 2 chat has no tool role"
    ]


BAD_DPO = [
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "q", "chosen": [], "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "'chosen' and 'rejected' are identical"),
    (
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "chosen": "a",
            "rejected": "b",
        },
        "the prompt ends with a assistant turn",
    ),
    (
        {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        "'chosen' message 0 has role 'user'; expected assistant",
    ),
    (
        {"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
        "no 'prompt', and 'chosen' and 'rejected' share no leading messages",
    ),
]


def test_bad_dpo_rows_are_reported_with_file_and_line(llama3, tmp_path):
    good = {"prompt": "q", "chosen": "yes", "rejected": "no"}
    path = _jsonl(tmp_path / "bad.jsonl", [good] + [r for r, _ in BAD_DPO])
    data = load_dpo(llama3, path, 512)
    assert data.counts["malformed"] == len(BAD_DPO) and data.counts["kept"] == 1
    for line, ((_, why), problem) in enumerate(zip(BAD_DPO, data.problems, strict=True), 2):
        assert problem.startswith(f"{path}:{line}: {why}"), problem
    with pytest.raises(HerdError, match=f"^{path}:2: 'chosen' is empty"):
        load_dpo(llama3, path, 512, strict=True)


def test_tokenizer_without_chat_format_is_fatal(llama3, tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "sft.jsonl", [{"messages": TOOL_DIALOG}])
    monkeypatch.setattr(llama3, "chat_format", None)
    with pytest.raises(HerdError, match="has no chat format"):
        load_sft(llama3, path, 512)
    with pytest.raises(HerdError, match="has no chat format"):
        load_dpo(llama3, path, 512)


def test_parquet_rows_match_jsonl(llama3, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"messages": TOOL_DIALOG}, {"messages": _dialog(3)}]
    # Parquet structs need one type per field: arguments as a JSON string, absent calls null
    call = TOOL_DIALOG[2]["tool_calls"][0]["function"]
    calls = [{"function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]
    flat = [
        {
            "messages": [
                {**m, "tool_calls": calls if "tool_calls" in m else None} for m in r["messages"]
            ]
        }
        for r in rows
    ]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "sft.parquet")
    from_parquet = load_sft(llama3, tmp_path / "sft.parquet", 512)
    from_jsonl = load_sft(llama3, _jsonl(tmp_path / "sft.jsonl", rows), 512)
    assert [(e.ids, e.mask) for e in from_parquet.examples] == [
        (e.ids, e.mask) for e in from_jsonl.examples
    ]
    assert from_parquet.examples[1].source == f"{tmp_path / 'sft.parquet'}:2"
    folder = load_sft(llama3, tmp_path, 512)  # a folder: both files, in name order
    assert folder.counts["kept"] == 4


def test_length_rules(llama3, tmp_path):
    path = _jsonl(tmp_path / "sft.jsonl", [{"messages": _dialog(k)} for k in range(6)])
    n = [len(e.ids) for e in load_sft(llama3, path, 10_000).examples]
    seq_len = sorted(n)[3] - 1  # the 4 shortest fit: n <= seq_len + 1
    dropped = load_sft(llama3, path, seq_len)
    assert dropped.counts["kept"] == 4 and dropped.counts["too_long"] == 2
    cut = load_sft(llama3, path, seq_len, on_long="truncate")
    assert cut.counts["kept"] == 6 and cut.counts["truncated"] == 2
    assert all(len(e.ids) <= seq_len + 1 for e in cut.examples)
    tiny = load_sft(llama3, path, 8, on_long="truncate")  # only the header fits: dropped
    assert tiny.counts["too_long"] == 6 and tiny.counts["kept"] == 0

    pairs = [{"prompt": "q", "chosen": "short", "rejected": "a much longer answer " * 5}]
    dpo = load_dpo(llama3, _jsonl(tmp_path / "dpo.jsonl", pairs), 10_000)
    ex = dpo.examples[0]
    limit = len(ex.prompt_ids) + len(ex.rejected_ids)
    assert load_dpo(llama3, tmp_path / "dpo.jsonl", limit).counts["kept"] == 1
    assert load_dpo(llama3, tmp_path / "dpo.jsonl", limit - 1).counts["too_long"] == 1


def test_pack_dialogues_best_fit_decreasing():
    rows = pack_dialogues([5, 3, 8, 2, 4, 6], 10)
    # longest first, each into the fullest row it fits: 8+2, 6+4, 5+3
    assert rows == [[2, 3], [4, 5], [0, 1]]
    with pytest.raises(HerdError, match="dialogue 0 takes 11 positions"):
        pack_dialogues([11], 10)


@pytest.fixture(scope="module")
def sft_examples(llama2, tmp_path_factory):
    path = _jsonl(
        tmp_path_factory.mktemp("sft") / "sft.jsonl", [{"messages": _dialog(k)} for k in range(23)]
    )
    return load_sft(llama2, path, 64).examples


def _batches(examples, **kw):
    return SFTBatches(examples, batch_size=3, seq_len=64, seed=kw.pop("seed", 5), **kw)


def test_packing_never_splits_a_dialogue(sft_examples):
    batches = _batches(sft_examples)
    assert sorted(i for row in batches.rows for i in row) == list(range(len(sft_examples)))
    for r in range(batches.n_rows):
        inputs, targets, docs = batches.row(r)
        assert docs.tolist() == sorted(docs.tolist())  # non-decreasing
        for d, i in enumerate(batches.rows[r]):
            ids, mask = sft_examples[i].ids, sft_examples[i].mask
            at = (docs == d).nonzero().squeeze(1)
            assert inputs[at].tolist() == ids[:-1]
            expected = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
            assert targets[at].tolist() == expected
        pad = docs == len(batches.rows[r])
        assert (targets[pad] == IGNORE_INDEX).all() and (inputs[pad] == 0).all()


def test_batches_are_deterministic_resumable_and_split_by_rows(sft_examples):
    a, b = _batches(sft_examples), _batches(sft_examples)
    steps = 3 * a.n_rows // a.batch_size  # crosses epoch boundaries
    first = [a.next_micro_batch() for _ in range(steps)]
    again = [b.next_micro_batch() for _ in range(steps)]
    assert all(torch.equal(x.inputs, y.inputs) for x, y in zip(first, again, strict=True))

    resumed = _batches(sft_examples)
    resumed.skip(2)
    state = resumed.state_dict()
    fresh = _batches(sft_examples)
    fresh.load_state_dict(state)
    for x in first[2:]:
        y = fresh.next_micro_batch()
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.doc_ids, y.doc_ids)

    part = _batches(sft_examples)
    for x in first[:4]:
        y = part.next_micro_batch(slice(1, 3))
        assert torch.equal(x.targets[1:3], y.targets)
    other_seed = _batches(sft_examples, seed=6).next_micro_batch()
    assert not torch.equal(other_seed.inputs, first[0].inputs)


def test_packed_loss_is_the_sum_of_dialogues_alone_on_assistant_tokens(llama2, sft_examples):
    config = herd.ModelConfig(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=llama2.vocab_size,
        ffn_dim=64,
        max_seq_len=64,
    )
    model = herd.build_model(config, seed=0)
    batches = _batches(sft_examples)
    batch = batches.next_micro_batch()
    order = batches.order.permutation(0)[: batches.batch_size]
    with torch.no_grad():
        packed = model(
            batch.inputs, packed=PackedAttention.of(batch.doc_ids), targets=batch.targets
        )
        per_token = model(
            batch.inputs,
            packed=PackedAttention.of(batch.doc_ids),
            targets=batch.targets,
            reduction="none",
        )
        alone = 0.0
        for r in order:
            for i in batches.rows[r]:
                ids, mask = sft_examples[i].ids, sft_examples[i].mask
                targets = torch.tensor(
                    [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
                )
                alone += model(torch.tensor([ids[:-1]]), targets=targets[None]).item()
    torch.testing.assert_close(packed.item(), alone, rtol=1e-4, atol=1e-3)
    # the loss sits exactly on the assistant's tokens: its answers and the EOS closing each
    counted = per_token.view(batch.targets.shape) != 0
    assert torch.equal(counted, batch.targets != IGNORE_INDEX)
    row = order[0]
    i = batches.rows[row][0]
    text = llama2.decode(batch.targets[0][(batch.doc_ids[0] == 0) & counted[0]].tolist())
    assert text.startswith(_dialog(i)[1]["content"])


def test_only_assistant_tokens_carry_gradient(llama2, sft_examples):
    """Perturb what the model predicts at every other position (its logits there): the SFT loss
    and its gradient do not move; perturb an assistant position's and they do."""
    import torch.nn.functional as F

    config = herd.ModelConfig(
        dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=llama2.vocab_size, ffn_dim=64
    )
    model = herd.build_model(config, seed=0)
    batch = _batches(sft_examples).next_micro_batch()
    with torch.no_grad():
        logits = model(batch.inputs, packed=PackedAttention.of(batch.doc_ids))

    def loss_of(values):
        values = values.clone().requires_grad_(True)
        loss = F.cross_entropy(
            values.flatten(0, 1),
            batch.targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        loss.backward()
        return loss.detach(), values.grad

    base, grad = loss_of(logits)
    assistant = batch.targets != IGNORE_INDEX
    assert assistant.any() and (~assistant).any()
    assert torch.all(grad[~assistant] == 0) and torch.all(grad[assistant].abs().sum(-1) > 0)
    noise = torch.randn_like(logits) * 5
    elsewhere, _ = loss_of(torch.where(assistant[..., None], logits, logits + noise))
    assert elsewhere == base
    there, _ = loss_of(torch.where(assistant[..., None], logits + noise, logits))
    assert there != base
