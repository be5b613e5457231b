"""Reward-model parity with transformers' LlamaForSequenceClassification.

A tiny random herd reward model (config.head "score") -> `herd convert --to hf` -> transformers
loads it as LlamaForSequenceClassification (one label, `score.weight`, pad_token_id set) and
scores padded batches of formatted conversations within 1e-4 of herd's `score_sequences`, in
both chat formats (Llama 2's conversations end with EOS, so the pad id must be another token);
`herd convert --from hf` reads the export back as a reward model with the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import herd
from herd.checkpoint.io import save_herd_folder
from herd.cli import main
from herd.posttrain.reward import conversation_ids, load_reward_model, score_sequences
from tests.sums_tokenizer import sums_tokenizer

LLAMA2_TOKENIZER = Path(__file__).parents[1] / "data" / "llama2-tokenizer.model"
CONVERSATIONS = [
    ("What is 2 plus 3?", "5"),
    ("What is 7 plus 8? Answer with the digits only.", "15, because 7 plus 8 is fifteen."),
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Add 1 and 1."},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "And 2 and 2?"},
        ],
        "4",
    ),
    ("hi", {"role": "assistant", "content": "Hello! What would you like to add?"}),
    ("What is 9 plus 9?", "18"),
]


def _tokenizer(kind: str, root: Path):
    if kind == "llama2":  # under the name checkpoint folders carry it by
        (root / "tokenizer.model").write_bytes(LLAMA2_TOKENIZER.read_bytes())
        return herd.load_tokenizer(root / "tokenizer.model")
    return sums_tokenizer(root, 320, repeats=1)


@pytest.mark.parametrize("kind", ["llama2", "llama3"])
def test_exported_reward_model_scores_as_herd(kind, tmp_path):
    tok = _tokenizer(kind, tmp_path)
    config = herd.ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=tok.vocab_size,
        max_seq_len=128, rope_theta=500000.0, head="score",
    )  # fmt: skip
    model = herd.build_model(config, seed=1)
    with torch.no_grad():  # non-trivial norm gains and a larger head: differences would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        model.output.weight.mul_(20.0)
    src, dst = tmp_path / "rm", tmp_path / "rm-hf"
    save_herd_folder(config, model.state_dict(), src, tok.files())
    assert json.loads((src / "config.json").read_text())["model"]["head"] == "score"
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 0

    hf_config = json.loads((dst / "config.json").read_text())
    assert hf_config["architectures"] == ["LlamaForSequenceClassification"]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(dst).float().eval()
    assert type(hf).__name__ == "LlamaForSequenceClassification"
    assert hf.config.num_labels == 1 and hf.score.weight.shape == (1, 64)
    pad = hf.config.pad_token_id
    assert pad is not None

    herd_model, herd_tok = load_reward_model(src, "cpu")
    ids = [conversation_ids(herd_tok, p, r) for p, r in CONVERSATIONS]
    assert len({len(i) for i in ids}) > 1  # padded batches
    assert all(pad not in i for i in ids)
    if kind == "llama2":  # the case a pad id equal to EOS would get wrong
        assert all(i[-1] == tok.eos_id for i in ids)
    ours = torch.tensor(score_sequences(herd_model, ids, batch_size=3))
    width = max(map(len, ids))
    batch = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for r, row in enumerate(ids):
        batch[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    with torch.no_grad():
        theirs = hf(input_ids=batch, attention_mask=mask).logits.squeeze(-1)
    assert ours.std() > 1e-2  # scores that differ, so a wrong position would show
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)

    # and back: the HF folder read as a herd reward model scores the same
    back = tmp_path / "back"
    assert main(["convert", str(dst), str(back)]) == 0
    again, _ = load_reward_model(back, "cpu")
    torch.testing.assert_close(torch.tensor(score_sequences(again, ids)), ours, atol=1e-5, rtol=0)
