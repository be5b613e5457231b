"""DPO loss and metrics against TRL's DPOTrainer on the same weights and the same batch.

A tiny herd policy and a perturbed copy as reference, each exported to HF with `herd convert`;
TRL 1.16's DPOTrainer (beta 0.1, reference model given) scores one fixed batch of preference
pairs through `compute_loss`, no training step: with loss_type sigmoid and the terminators out of
the completion mask (herd's DPO term and TRL's metrics), and with loss_type sft and the chosen
terminators in it (herd's NLL term). herd's `preference_logps` + `dpo_loss` on the herd models
must give the sigmoid loss + 0.2 x the sft loss, and the same rewards and logps.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

import herd  # noqa: E402
from herd.checkpoint.convert import convert  # noqa: E402
from herd.checkpoint.io import save_herd_folder  # noqa: E402
from herd.posttrain.dpo import PreferenceBatch, dpo_loss, preference_logps  # noqa: E402
from herd.vocab.bpe import train_bpe  # noqa: E402
from tests.tokenizer_corpus import CORPUS  # noqa: E402

BETA, ALPHA = 0.1, 0.2
METRICS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(herd policy, herd reference, HF policy, HF reference, HF tokenizer)."""
    root = tmp_path_factory.mktemp("dpo")
    (root / "corpus.txt").write_text("\n".join(CORPUS[:10]) * 5, encoding="utf-8", errors="replace")
    tok = train_bpe([root / "corpus.txt"], 600, root / "tok", show_progress=False)
    files = [tok / "tokenizer.json", tok / "tokenizer_config.json"]
    config = herd.ModelConfig(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=600, ffn_dim=64, max_seq_len=64
    )
    policy = herd.build_model(config, seed=0)
    reference = herd.build_model(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a reference that differs, so the rewards are not all zero
        for p in reference.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    hf = []
    for name, model in [("policy", policy), ("reference", reference)]:
        save_herd_folder(config, model.state_dict(), root / name, tokenizer=files)
        convert(root / name, root / f"{name}-hf", dst_format="hf")
        hf.append(transformers.AutoModelForCausalLM.from_pretrained(root / f"{name}-hf").float())
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "policy-hf")
    return policy, reference, hf[0], hf[1], tokenizer


def _pairs():
    """Three pairs as (prompt ids, chosen ids, rejected ids, header length, trailer length):
    the first `header` response tokens are masked out (the chat header) and the last `trailer`
    ones marked 2 (end-of-turn tokens: out of the DPO term, in the NLL term)."""
    gen = torch.Generator().manual_seed(2)

    def ids(n):
        return torch.randint(0, 600, (n,), generator=gen).tolist()

    return [
        (ids(5), ids(7), ids(4), 2, 1),
        (ids(3), ids(3), ids(9), 1, 1),
        (ids(8), ids(5), ids(6), 0, 0),
    ]


def _side(prompt, response, header, trailer):
    ids = prompt + response
    mask = [0] * (len(prompt) + header) + [1] * (len(response) - header - trailer) + [2] * trailer
    return ids, mask


def _padded(rows, value=0):
    T = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (T - len(r)) for r in rows])


def _batch():
    chosen = [_side(p, c, h, t) for p, c, _, h, t in _pairs()]
    rejected = [_side(p, r, h, t) for p, _, r, h, t in _pairs()]
    return chosen, rejected


def _trl_metrics(policy, reference, tokenizer, tmp_path, loss_type, scored, weights=None):
    """TRL's loss with `loss_type` (a name or a list, with `weights`) and its logged metrics on
    the batch, the completion mask being the positions whose herd mask value is in `scored`."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / f"trl-{'-'.join(types)}"),
        beta=BETA,
        loss_type=types,
        **({"loss_weights": weights} if weights else {}),
        report_to="none",
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=3,
    )
    text = {"prompt": ["a b"] * 3, "chosen": [" c"] * 3, "rejected": [" d"] * 3}
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_dict(text),
        processing_class=tokenizer,
    )
    chosen, rejected = _batch()
    rows = [ids for ids, _ in chosen + rejected]
    masks = [[int(m in scored) for m in mask] for _, mask in chosen + rejected]
    inputs = {
        "input_ids": _padded(rows),
        "attention_mask": _padded([[1] * len(r) for r in rows]),
        "completion_mask": _padded(masks),
    }
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, inputs)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), logged


def _matches_trl(policy, reference, chosen, rejected, masks, trl_loss, trl_metrics):
    """herd's loss and metrics on the batch (each mask passed through `masks`) equal TRL's within
    1e-5; herd's PairLogps of the policy."""
    batch = PreferenceBatch(
        _padded([ids for ids, _ in chosen]),
        _padded([masks(mask) for _, mask in chosen]),
        _padded([ids for ids, _ in rejected]),
        _padded([masks(mask) for _, mask in rejected]),
    )
    ours = preference_logps(policy, batch)
    with torch.no_grad():
        ref = preference_logps(reference, batch)
    loss, metrics = dpo_loss(
        ours.chosen, ours.rejected, ref.chosen, ref.rejected, BETA, ALPHA, ours.chosen_nll()
    )
    assert abs(loss.item() - trl_loss) < 1e-5, (loss.item(), trl_loss)
    for name in METRICS:
        assert abs(metrics[name].item() - trl_metrics[name]) < 1e-5, name
    return ours


def test_loss_and_metrics_match_trl(models, tmp_path):
    policy, reference, hf_policy, hf_reference, tokenizer = models
    dpo_term, trl_metrics = _trl_metrics(
        hf_policy, hf_reference, tokenizer, tmp_path, "sigmoid", scored={1}
    )
    nll_term, _ = _trl_metrics(hf_policy, hf_reference, tokenizer, tmp_path, "sft", scored={1, 2})
    trl_loss = dpo_term + ALPHA * nll_term

    chosen, rejected = _batch()
    ours = _matches_trl(
        policy, reference, chosen, rejected, lambda mask: mask, trl_loss, trl_metrics
    )
    # not a vacuous comparison: the rewards differ from zero and between the sides, and the
    # terminators change the NLL term
    assert abs(trl_metrics["rewards/margins"]) > 1e-3
    assert abs(ours.chosen_nll().item() - nll_term) < 1e-5
    assert abs(-ours.chosen.sum().item() / ours.chosen_tokens.sum().item() - nll_term) > 1e-3


def test_without_terminators_one_trl_call_matches(models, tmp_path):
    """On responses with no end-of-turn token (mask values 0 and 1 only) herd's loss is TRL's
    `loss_type=["sigmoid", "sft"]`, `loss_weights=[1.0, 0.2]` in one call, as Llama 3 states it."""
    policy, reference, hf_policy, hf_reference, tokenizer = models
    trl_loss, trl_metrics = _trl_metrics(
        hf_policy, hf_reference, tokenizer, tmp_path, ["sigmoid", "sft"], {1}, [1.0, ALPHA]
    )
    chosen, rejected = _batch()
    content = lambda mask: [int(m == 1) for m in mask]  # noqa: E731 - the terminators left out
    _matches_trl(policy, reference, chosen, rejected, content, trl_loss, trl_metrics)
