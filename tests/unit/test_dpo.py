"""herd/posttrain/dpo.py: response log-probs, the DPO loss, and the stored reference log-probs."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import herd
from herd.errors import HerdError
from herd.posttrain.dpo import PreferenceBatch, dpo_loss, preference_logps, sequence_logps
from herd.posttrain.reference_tables import load_reference_logps, reference_logps

CONFIG = herd.ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, ffn_dim=64, max_seq_len=64
)


@pytest.fixture(scope="module")
def model():
    return herd.build_model(CONFIG, seed=0)


def _side(gen, prompt, response, header=1, trailer=1):
    ids = torch.randint(0, 50, (prompt + response,), generator=gen)
    mask = torch.zeros(prompt + response, dtype=torch.long)
    mask[prompt + header : prompt + response - trailer] = 1
    return ids, mask


def _batch(seed=0, pairs=((4, 6, 3), (2, 3, 8), (5, 5, 5))):
    """PreferenceBatch of right-padded pairs (prompt, chosen, rejected lengths), and the
    unpadded sides as lists of (ids, mask)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = [_side(gen, p, c) for p, c, _ in pairs]
    rejected = [_side(gen, p, r) for p, _, r in pairs]

    def pad(rows):
        T = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, T - len(r))) for r in rows])

    batch = PreferenceBatch(
        pad([i for i, _ in chosen]),
        pad([m for _, m in chosen]),
        pad([i for i, _ in rejected]),
        pad([m for _, m in rejected]),
    )
    return batch, chosen, rejected


def _logps_from_logits(model, ids, mask):
    """Reference computation from full logits: Σ over t with mask[t+1] of log p(ids[t+1])."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).float(), dim=-1)[0]
    picked = logp[:-1].gather(1, ids[1:, None])[:, 0]
    return (picked * mask[1:]).sum(), int(mask[1:].sum())


def test_sums_response_tokens_only(model):
    _, chosen, _ = _batch()
    for ids, mask in chosen:
        with torch.no_grad():
            logps, tokens = sequence_logps(model, ids[None], mask[None])
        expected, count = _logps_from_logits(model, ids, mask)
        assert torch.allclose(logps[0], expected, atol=1e-5)
        assert tokens.item() == count


def test_masked_positions_carry_no_gradient(model):
    batch, _, _ = _batch()
    ids, mask = batch.chosen_ids, batch.chosen_mask
    scale = torch.ones(ids.shape, requires_grad=True)

    def scaled(tokens, **kw):  # the model's per-token NLL, times a leaf we can read grads off
        return model(tokens, **kw) * scale

    logps, _ = sequence_logps(scaled, ids, mask)
    logps.sum().backward()
    counted = torch.zeros_like(mask, dtype=torch.bool)
    counted[:, :-1] = mask[:, 1:].bool()  # position t predicts token t+1
    assert (scale.grad[~counted] == 0).all()
    assert (scale.grad[counted] != 0).all()


def test_one_forward_over_both_sides_equals_separate_forwards(model):
    batch, chosen, rejected = _batch()
    with torch.no_grad():
        out = preference_logps(model, batch)
        for i, ((ci, cm), (ri, rm)) in enumerate(zip(chosen, rejected, strict=True)):
            c, ct = sequence_logps(model, ci[None], cm[None])
            r, rt = sequence_logps(model, ri[None], rm[None])
            assert torch.allclose(out.chosen[i], c[0], atol=1e-5)
            assert torch.allclose(out.rejected[i], r[0], atol=1e-5)
            assert out.chosen_tokens[i] == ct[0] and out.rejected_tokens[i] == rt[0]
    expected_nll = -out.chosen.sum() / out.chosen_tokens.sum()
    assert torch.allclose(out.chosen_nll(), expected_nll)


def test_packed_documents_are_scored_separately(model):
    _, chosen, rejected = _batch()
    (a, am), (b, bm) = chosen[0], rejected[1]
    ids, mask = torch.cat([a, b])[None], torch.cat([am, bm])[None]
    doc_ids = torch.cat([torch.full_like(a, 7), torch.full_like(b, 8)])[None]
    with torch.no_grad():
        logps, tokens = sequence_logps(model, ids, mask, doc_ids)
        for j, (x, xm) in enumerate([(a, am), (b, bm)]):
            alone, count = sequence_logps(model, x[None], xm[None])
            assert torch.allclose(logps[0, j], alone[0], atol=1e-5)
            assert tokens[0, j] == count[0]


def test_loss_at_init_is_log2_plus_nll(model):
    batch, _, _ = _batch()
    out = preference_logps(model, batch)
    ref_c, ref_r = out.chosen.detach(), out.rejected.detach()
    loss, metrics = dpo_loss(out.chosen, out.rejected, ref_c, ref_r, 0.1, 0.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    nll = out.chosen_nll()
    loss, metrics = dpo_loss(out.chosen, out.rejected, ref_c, ref_r, 0.1, 0.2, nll)
    assert math.isclose(loss.item(), math.log(2) + 0.2 * nll.item(), rel_tol=1e-6)
    for name in ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]:
        assert metrics[name].item() == 0.0
    assert torch.equal(metrics["logps/chosen"], ref_c.mean())


def test_gradient_raises_chosen_and_lowers_rejected():
    pc = torch.tensor([-10.0, -20.0], requires_grad=True)
    pr = torch.tensor([-12.0, -15.0], requires_grad=True)
    ref = torch.tensor([-11.0, -16.0])
    loss, metrics = dpo_loss(pc, pr, ref, ref, beta=0.1, alpha=0.0)
    loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    # by hand: β(Δc − Δr) per pair, −log σ, mean
    z = 0.1 * ((pc - ref) - (pr - ref)).detach()
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(z).mean())
    assert metrics["rewards/accuracies"].item() == 0.5
    assert torch.allclose(metrics["rewards/margins"], z.mean())


def test_alpha_needs_the_nll():
    x = torch.zeros(2)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, alpha=0.2)


class _CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, tokens, **kw):
        self.calls += 1
        return self.model(tokens, **kw)


def test_reference_logps_store_resume_and_context(model, tmp_path):
    batches = [_batch(seed=s)[0] for s in range(4)]
    expected = reference_logps(model, batches)
    assert expected.shape == (12, 2) and not expected.requires_grad
    with torch.no_grad():
        first = preference_logps(model, batches[0])
    assert torch.allclose(expected[:3, 0], first.chosen)
    assert torch.allclose(expected[:3, 1], first.rejected)

    path = tmp_path / "ref.safetensors"

    def interrupted():
        yield from batches[:2]
        raise KeyboardInterrupt

    counting = _CountingModel(model)
    with pytest.raises(KeyboardInterrupt):
        reference_logps(counting, interrupted(), path, save_every=1)
    with pytest.raises(HerdError, match="incomplete"):
        load_reference_logps(path)
    assert load_reference_logps(path, partial=True).shape == (6, 2)

    entered = []

    @contextlib.contextmanager
    def as_reference():  # e.g. LoRA adapters disabled
        entered.append(True)
        yield

    counting.calls = 0
    resumed = reference_logps(counting, batches, path, context=as_reference, save_every=1)
    assert counting.calls == 2 and entered == [True]  # only the two batches not yet stored
    assert torch.allclose(resumed, expected, atol=1e-6)
    assert torch.equal(load_reference_logps(path), resumed)

    counting.calls = 0
    assert torch.equal(reference_logps(counting, batches, path), resumed)
    assert counting.calls == 0  # a complete file is read, not recomputed


def test_reference_pass_sorts_by_length_and_keeps_data_order(model):
    """Pairs scored in length-sorted forwards of at most max_tokens positions, each cut to its
    longest scored row, give the per-batch values, in data order."""
    lengths = ((4, 6, 3), (2, 3, 8), (5, 5, 5), (3, 20, 3), (1, 3, 3), (6, 9, 14))
    batch, _, _ = _batch(seed=3, pairs=lengths)  # pair widths 9, 9, 9, 22, 3, 19
    with torch.no_grad():
        whole = preference_logps(model, batch)
    expected = torch.stack([whole.chosen, whole.rejected], dim=1)
    counting = _CountingModel(model)
    # None: one forward; 54 = 2 sides x 3 pairs x 9: [3, 9, 9], [9], [19], [22]; 1: one pair each
    for max_tokens, forwards in ((None, 1), (54, 4), (1, 6)):
        counting.calls = 0
        table = reference_logps(counting, [batch], max_tokens=max_tokens)
        assert counting.calls == forwards
        assert torch.allclose(table, expected, atol=1e-5)
        assert not table.is_inference()


def test_a_stored_table_is_read_only_for_its_fingerprint(model, tmp_path):
    batches = [_batch(seed=s)[0] for s in range(2)]
    path = tmp_path / "ref.safetensors"
    mine = {"fingerprint": "a" * 64, "pairs_sha256": "b" * 64}
    table = reference_logps(model, batches, path, fingerprint=mine)
    assert torch.equal(load_reference_logps(path, fingerprint=mine), table)
    with pytest.raises(HerdError, match="computed for another pairs_sha256"):
        load_reference_logps(path, fingerprint={**mine, "pairs_sha256": "c" * 64})
    heard = []
    counting = _CountingModel(model)
    again = reference_logps(counting, batches, path, fingerprint={**mine, "fingerprint": "d"},
                            log=heard.append)  # fmt: skip
    assert counting.calls == 2 and "computed for another fingerprint" in heard[0]
    assert torch.allclose(again, table, atol=1e-6)
