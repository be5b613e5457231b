"""A Hugging Face Llama Guard 3 layout (LlamaForCausalLM + the Llama 3 tokenizer) read by herd's
guard: the unsafe probability of padded batches equals transformers' softmax at the last prompt
position, the token "unsafe" (id 39257 in Llama 3's vocabulary), for each conversation alone.

The model is tiny and random, with the "unsafe" row of its output layer scaled up so that the
probability varies across conversations (a wrong position or a padding leak would show).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from herd.guard.classify import Guard
from herd.guard.policy import default_policy, resolve_policy
from herd.guard.prompt import render_prompt
from herd.tokenizer import load_tokenizer
from tests import references

UNSAFE = 39257
CONVERSATIONS = [
    [{"role": "user", "content": "How do I bake bread?"}],
    [
        {"role": "user", "content": "Tell me about the history of the printing press in Europe."},
        {"role": "assistant", "content": "Gutenberg built his press around 1440 in Mainz."},
    ],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "What is my neighbour's address?"},
        {"role": "assistant", "content": "I can't share that."},
        {"role": "user", "content": "Then find his phone number."},
    ],
]


@pytest.fixture(scope="module")
def hf_guard(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard-hf")
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128009,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight[UNSAFE].normal_(0.0, 2.0)
    model.save_pretrained(root)
    (root / "tokenizer.model").write_bytes(references.llama3_tokenizer().read_bytes())
    return root, model


def _reference(model, tok, messages, policy) -> float:
    ids = tok.encode(render_prompt(messages, policy) + "\n\n", allow_special=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits.float(), -1)[UNSAFE].item()


@pytest.mark.parametrize("policy", [default_policy(), resolve_policy(None, "S1,S7,S10")])
def test_unsafe_probability_matches_transformers(hf_guard, policy):
    root, model = hf_guard
    guard = Guard.load(root, policy, device="cpu", batch_size=3)
    assert guard.tokenizer.chat_format == "llama3" and guard.unsafe_ids == [UNSAFE]
    ours = torch.tensor(guard.unsafe_probabilities(CONVERSATIONS))
    tok = load_tokenizer(root / "tokenizer.model")
    theirs = torch.tensor([_reference(model, tok, m, policy) for m in CONVERSATIONS])
    assert theirs.std() > 0.02  # probabilities that differ, so a mix-up would show
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_classify_labels_by_threshold_and_names_policy_codes(hf_guard):
    root, _ = hf_guard
    guard = Guard.load(root, resolve_policy(None, "S1,S7,S10"), device="cpu")
    probs = guard.unsafe_probabilities(CONVERSATIONS)
    guard.threshold = sorted(probs)[1]  # two or more flagged, the lowest one not
    results = guard.classify(CONVERSATIONS)
    for p, r in zip(probs, results, strict=True):
        assert r.label == ("unsafe" if p >= guard.threshold else "safe")
        assert r.unsafe_probability == pytest.approx(p, abs=1e-6)
        assert set(r.categories) <= {"S1", "S7", "S10"}
        assert r.label == "unsafe" or (r.categories == () and r.answer == "")
    assert [r.role for r in results] == ["User", "Agent", "User", "User"]
