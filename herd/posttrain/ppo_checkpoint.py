"""PPO checkpoints and run folder (`herd ppo`, ppo_run.py): the trainer's plus a value model.

checkpoints/step-N is a training checkpoint of herd/train/checkpoint.py (written atomically,
checksummed, the newest intact one loaded on resume) holding the policy: a herd folder that
`herd generate` and `herd serve` load, or with LoRA the adapters alone in PEFT's layout. Beside
it, value/ is the value model as a reward-model herd folder (config head "score", the reward
model's tokenizer files): Llama 2 (§3.2.3) starts it from the reward model, so it keeps that
format and `herd rm score` can read it. train_state/optimizer.pt holds both AdamW states
({"policy", "value"}), state.json the iteration, tokens sampled and prompt cursor, rng.pt the
torch generators (LoRA dropout draws from them; sampling and shuffles use seeds of their own).
"""

from __future__ import annotations

from pathlib import Path

import torch

from herd.errors import HerdError


def save_ppo_checkpoint(runner) -> Path:
    """Write checkpoints/step-N of `runner` (a PPORunner) after its current iteration: the
    policy (or its adapters), value/, and train_state/ with both optimizers' states."""
    from herd.checkpoint.io import save_safetensors, write_herd_config
    from herd.model.lora import adapter_state_dict, peft_config_dict
    from herd.train.checkpoint import save_training_checkpoint

    rng = {"torch": torch.get_rng_state()}
    if runner.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(runner.device)
    state = {"tokens": runner.tokens, "cursor": runner.step * runner.run.ppo.batch_size}
    optim = {"policy": runner.policy_optim.state_dict(), "value": runner.value_optim.state_dict()}
    value_weights = runner.value.trunk.state_dict()
    rm_files = runner.helpful[1].files()

    def value_folder(tmp: Path) -> None:
        folder = tmp / "value"  # a reward-model herd folder: `herd rm score` reads it
        folder.mkdir()
        write_herd_config(folder, runner.value.trunk.config, value_weights.values(), rm_files)
        save_safetensors(value_weights, folder)

    adapter, weights = None, {}
    if runner.lora is not None:
        tensors = {k: v.contiguous() for k, v in adapter_state_dict(runner.policy).items()}
        adapter = (tensors, peft_config_dict(runner.lora, runner.run.init_checkpoint or None))
    else:
        weights = runner.policy.state_dict()
    return save_training_checkpoint(
        runner.run_dir / "checkpoints",
        runner.step,
        runner.model_config,
        weights,
        optim,
        state,
        rng,
        runner.tokenizer.files(),
        runner.run.train.keep_checkpoints,
        adapter=adapter,
        extra_files=value_folder,
    )


def restore_ppo_checkpoint(runner) -> Path | None:
    """Load the newest intact checkpoint of the run into `runner`; its path, or None."""
    from herd.checkpoint.io import read_herd_folder
    from herd.model.lora import peft_names
    from herd.train.checkpoint import check_same_model, load_latest

    found = load_latest(
        runner.run_dir / "checkpoints",
        lambda path, why: runner.log.event(
            runner.step, "checkpoint_skipped", path=str(path), reason=why
        ),
    )
    if found is None:
        return None
    path, ckpt = found
    check_same_model(path, ckpt["config"], runner.model_config)
    if ckpt["format"] == "adapter":
        names = {peft: own for own, peft in peft_names(runner.policy.state_dict()).items()}
        if set(ckpt["model"]) != set(names):
            raise HerdError(f"{path}: its adapters do not match [lora]")
        adapters = {names[k]: v for k, v in ckpt["model"].items()}
        runner.policy.load_state_dict(adapters, strict=False)
    else:
        weights = dict(ckpt["model"])
        if runner.model_config.tie_embeddings:
            weights["output.weight"] = weights["embed.weight"]
        runner.policy.load_state_dict(weights)
    runner.value.trunk.load_state_dict(read_herd_folder(path / "value")[1])
    runner.policy_optim.load_state_dict(ckpt["optimizer"]["policy"])
    runner.value_optim.load_state_dict(ckpt["optimizer"]["value"])
    runner.step, runner.tokens = ckpt["state"]["step"], ckpt["state"]["tokens"]
    torch.set_rng_state(ckpt["rng"]["torch"])
    if runner.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], runner.device)
    return path


def prepare_run_dir(runner, resume: bool) -> None:
    """The run folder of a fresh run (old logs removed) or a resumed one (the newest intact
    checkpoint loaded, the logs cut back to its iteration); config.toml written either way."""
    from herd.train.checkpoint import remove_stale_temporaries
    from herd.train.config import dump_toml

    runner.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for f in (runner.log.metrics, runner.log.events):
            f.unlink(missing_ok=True)
    stale = remove_stale_temporaries(runner.run_dir / "checkpoints")
    path = restore_ppo_checkpoint(runner) if resume else None
    (runner.run_dir / "config.toml").write_text(dump_toml(runner.run))
    if resume:
        runner.log.truncate(runner.step)
        for folder in stale:
            runner.log.event(runner.step, "stale_checkpoint_removed", path=str(folder))
        runner.log.event(runner.step, "resume", checkpoint=None if path is None else str(path))
