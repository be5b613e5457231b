"""herd's LoRA adapters against PEFT on transformers' LlamaForCausalLM.

A tiny herd model with random non-zero adapters -> `save_adapter`; the base -> `herd convert --to
hf`; then `PeftModel.from_pretrained(LlamaForCausalLM, adapter)` must give herd's logits (float32,
1e-5), with GQA and q/k among the targets so a RoPE-layout mismatch in q/k rows would show.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import herd  # noqa: E402
from herd.checkpoint.convert import convert  # noqa: E402
from herd.checkpoint.hf import herd_to_hf_name  # noqa: E402
from herd.checkpoint.io import save_herd_folder  # noqa: E402
from herd.model.families import build_model  # noqa: E402
from herd.model.lora import (  # noqa: E402
    LoraConfig,
    apply_lora,
    lora_layers,
    merge_lora,
    save_adapter,
)

GQA = herd.ModelConfig(
    dim=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=256,
    ffn_dim=160,
    rope_theta=500000.0,
    max_seq_len=128,
)
TARGETS = {
    "q-k": ("q_proj", "k_proj"),
    "all-linear": ("all-linear",),
}


def _adapted_herd_model(targets, r=4, alpha=8.0):
    model = build_model(GQA, seed=3).eval()
    with torch.no_grad():  # non-trivial norm gains, as in test_hf_parity
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(r=r, alpha=alpha, target_modules=targets))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B non-zero, large enough that a misplaced row changes the logits
        for m in lora_layers(model).values():
            m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=gen) * 0.2)
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.2)
    return model, base_state


@pytest.mark.parametrize("targets", TARGETS)
def test_peft_on_the_hf_export_gives_herd_logits(tmp_path, targets):
    model, base_state = _adapted_herd_model(TARGETS[targets])
    save_herd_folder(GQA, base_state, tmp_path / "base")
    convert(tmp_path / "base", tmp_path / "hf", dst_format="hf")
    save_adapter(model, tmp_path / "adapter", base_path=tmp_path / "hf")
    tokens = torch.randint(0, GQA.vocab_size, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(tokens)

    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(tokens).logits
        with peft_model.disable_adapter():
            base = peft_model(tokens).logits
    assert (theirs - base).abs().max().item() > 1e-2  # the adapters do change the logits
    assert (ours - theirs).abs().max().item() < 1e-5

    # Every tensor PEFT would save for this config is one herd wrote, and nothing else.
    saved = set(peft.get_peft_model_state_dict(peft_model))
    from safetensors.torch import load_file

    assert saved == set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))


def test_merge_matches_peft_merge_and_unload(tmp_path):
    model, base_state = _adapted_herd_model(("q_proj", "k_proj", "down_proj"), r=3, alpha=5.0)
    save_herd_folder(GQA, base_state, tmp_path / "base")
    convert(tmp_path / "base", tmp_path / "hf", dst_format="hf")
    save_adapter(model, tmp_path / "adapter", base_path=tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").merge_and_unload()
    theirs = theirs.state_dict()
    for name, w in merge_lora(model).items():
        torch.testing.assert_close(w, theirs[herd_to_hf_name(name)], atol=1e-6, rtol=0)
