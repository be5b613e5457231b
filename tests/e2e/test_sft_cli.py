"""`herd sft`: fine-tuning a checkpoint on conversations through the pretraining engine."""

from __future__ import annotations

import json
import random

import pytest

import herd
from herd.checkpoint.io import save_herd_folder
from herd.vocab.bpe import train_bpe
from tests.e2e.cli_runner import herd_cli, herd_cli_inprocess, one_line_error

CONFIG = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128)


def _dialogues(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic conversations with exactly checkable answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        messages = [
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a + b}"},
        ]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Answer with a number."})
        rows.append({"messages": messages})
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    corpus = root / "corpus.txt"
    text = "\n".join(
        f"What is {a} plus {b}? {a + b}. Answer with a number."
        for a in range(10)
        for b in range(10)
    )
    corpus.write_text(text * 3, "utf-8")
    tok_dir = train_bpe([corpus], 400, root / "tok", show_progress=False)
    tok = herd.load_tokenizer(tok_dir)
    config = herd.ModelConfig(vocab_size=tok.vocab_size, **CONFIG)
    base = root / "base"
    model = herd.build_model(config, seed=0)
    save_herd_folder(config, model.state_dict(), base, tokenizer=tok.files())
    data = root / "chats.jsonl"
    rows = [json.dumps(r) for r in _dialogues(48)]
    rows.insert(5, json.dumps({"messages": [{"role": "user", "content": "no reply"}]}))
    data.write_text("\n".join(rows) + "\n", "utf-8")
    return root, base, data


def _args(base, data, out, *extra):
    return [
        "--model.checkpoint", base, "--data.path", data, "--data.seq_len", "64",
        "--data.batch_size", "4", "--train.steps", "12", "--train.log_every", "2",
        "--train.eval_every", "6", "--train.checkpoint_every", "6", "--train.out", out,
        "--data.val_fraction", "0.3",
        "--optim.lr", "3e-3", "--optim.warmup_steps", "2", *extra,
    ]  # fmt: skip


def test_sft_trains_on_assistant_tokens_and_resumes(setup, tmp_path):
    _, base, data = setup
    out = tmp_path / "run"
    proc = herd_cli("sft", *_args(base, data, out))
    assert "48 of 49 conversations kept (1 malformed" in proc.stderr
    assert f"{data}:6:" in proc.stderr and "assistant" in proc.stderr  # the row, named
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    # held-out conversations (a hash of their tokens picks them), masked as in training
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert "validation on" in proc.stderr and len(val) == 2 and val[-1] < val[0]
    assert losses[-1] < losses[0]
    resolved = (out / "config.toml").read_text()
    assert f'checkpoint = "{base}"' in resolved and "lr = 0.003" in resolved
    step = out / "checkpoints" / "step-00000012"
    assert herd.load(step).config == herd.load(base).config
    assert herd.load_tokenizer(step).chat_format == herd.load_tokenizer(base).chat_format
    # the tuned checkpoint chats in its format and stops at the end of its turn
    reply = herd_cli_inprocess(
        "generate", step, "--prompt", "What is 2 plus 3?", "--chat", "--temperature", "0",
        "--max-new-tokens", "8",
    )  # fmt: skip
    assert reply.returncode == 0

    # stopped after step 6 (its checkpoint) and resumed: the uninterrupted run's last loss
    from herd.posttrain.sft import load_sft_config, sft_data
    from herd.train.trainer import Trainer

    again = tmp_path / "again"
    flags = _args(base, data, again)
    run = load_sft_config(
        None, {k[2:]: str(v) for k, v in zip(flags[::2], flags[1::2], strict=True)}
    )
    Trainer(run, again, data=sft_data(run)).fit(show_progress=False, stop_at=6)
    herd_cli_inprocess("sft", "--resume", again)
    resumed = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    tail = [r for r in resumed if "loss" in r][-1]
    assert tail["step"] == 12 and tail["loss"] == pytest.approx(losses[-1], rel=1e-5)
    assert [r["val_loss"] for r in resumed if "val_loss" in r][-1] == pytest.approx(val[-1])


def test_sft_defaults_and_errors(setup, tmp_path):
    _, base, data = setup
    from herd.posttrain.sft import load_sft_config

    run = load_sft_config(None, {"model.checkpoint": str(base)})
    assert run.optim.lr == 1e-5 and run.optim.warmup_steps == 10
    toml = tmp_path / "c.toml"
    toml.write_text("[optim]\nlr = 2e-5\n")
    assert load_sft_config(str(toml), {}).optim.lr == 2e-5  # the file wins over the default
    one_line_error(
        herd_cli_inprocess("sft", "--data.path", data, check=False), "[model] checkpoint is empty"
    )
    one_line_error(
        herd_cli_inprocess("sft", *_args(base, data, tmp_path / "s", "--data.strict", "true"),
                           check=False),
        f"{data}:6:",
    )  # fmt: skip


def test_lora_sft_saves_the_adapters_alone(setup, tmp_path):
    """[lora] r > 0: the base stays frozen, checkpoints hold PEFT's adapter files and no model
    weights, `herd.load` merges them onto the base they name, PEFT loads them onto the base's HF
    export with the same logits, and a resumed run continues exactly."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from herd.checkpoint.convert import convert
    from herd.posttrain.sft import load_sft_config, sft_data
    from herd.train.trainer import Trainer

    _, base, data = setup
    out = tmp_path / "lora"
    lora = ["--lora.r", "4", "--lora.target_modules", "q_proj,k_proj,v_proj,o_proj,down_proj"]
    herd_cli_inprocess("sft", *_args(base, data, out, *lora))
    step = out / "checkpoints" / "step-00000012"
    assert (step / "adapter_model.safetensors").is_file()
    assert not (step / "model.safetensors").exists()
    named = json.loads((step / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == str(base.resolve())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]

    tuned, start = herd.load(step), herd.load(base)
    changed = {
        k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])
    }
    assert changed and all(k.endswith(("wq.weight", "wk.weight", "wv.weight", "wo.weight",
                                       "w2.weight")) for k in changed)  # fmt: skip
    merged = herd_cli_inprocess("convert", step, tmp_path / "merged", "--merge-lora")
    assert merged.returncode == 0
    for k, v in herd.load(tmp_path / "merged").state_dict().items():
        assert torch.equal(v, tuned.state_dict()[k]), k

    hf = convert(base, tmp_path / "hf", dst_format="hf")
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(hf), step).eval()
    tokens = torch.tensor([[1, 5, 9, 13, 40, 77, 3]])
    with torch.no_grad():
        torch.testing.assert_close(peft(tokens).logits, tuned(tokens), rtol=0, atol=1e-4)

    again = tmp_path / "again"
    flags = _args(base, data, again, *lora)
    run = load_sft_config(
        None, {k[2:]: str(v) for k, v in zip(flags[::2], flags[1::2], strict=True)}
    )
    Trainer(run, again, data=sft_data(run)).fit(show_progress=False, stop_at=6)
    herd_cli_inprocess("sft", "--resume", again)
    resumed = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed if "loss" in r][-1] == pytest.approx(losses[-1], rel=1e-5)

    sharded = herd_cli_inprocess(
        "sft", *_args(base, data, tmp_path / "x", *lora, "--train.checkpoint_format", "sharded"),
        check=False,
    )  # fmt: skip
    assert sharded.returncode == 2 and "Traceback" not in sharded.stderr
    assert "LoRA runs save the adapters alone" in sharded.stderr.splitlines()[-1]
