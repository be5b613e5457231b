"""A checkpoint ready for a command: the model on the chosen device and dtype, and its tokenizer.

`herd generate`, `herd chat` and `herd eval` (and later serving) open checkpoints the same way, so
they pick the same device, read every format `herd.load` reads, and say the same thing when
something is missing: a path that does not exist, a folder that holds no model, or a model with no
tokenizer where the command needs text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from herd.checkpoint.convert import detect_format, load, read_config
from herd.errors import HerdError
from herd.tokenizer import TOKENIZER_FILE_NAMES, Tokenizer, find_tokenizer, load_tokenizer


def choose_device(device: str | None, dtype: str | None) -> tuple[torch.device, str]:
    """(device, dtype name): CUDA when present unless `device` says otherwise; bfloat16 on GPU,
    float32 on CPU unless `dtype` says otherwise."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise HerdError(
            f"--device '{device}': not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise HerdError(f"--device '{device}': CUDA is not available on this machine")
    return chosen, dtype or ("bfloat16" if chosen.type == "cuda" else "float32")


def load_for_command(
    path: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    tokenizer_needed: str | None = None,
    head: str = "lm",
) -> tuple[torch.nn.Module, Tokenizer | None, torch.device]:
    """(model, tokenizer or None, device) for the checkpoint at `path`.

    `tokenizer_needed` is what the command needs a tokenizer for (e.g. "to encode --prompt; pass
    --prompt-ids instead"); given, a checkpoint without a tokenizer file is an error saying so.
    The model's presence is checked first, so a folder with neither says that it holds no model.
    `head` is the output the command needs: "lm" (text) or "score" (a reward model).
    """
    path = Path(path)
    fmt = detect_format(path)  # no such path, or a folder that holds no model: one clear error
    chosen, dtype_name = choose_device(device, dtype)
    tokenizer_file = find_tokenizer(path)
    if tokenizer_file is None and tokenizer_needed:
        folder = path if path.is_dir() else path.parent
        raise HerdError(
            f"{folder}: has a model but no tokenizer file ({' or '.join(TOKENIZER_FILE_NAMES)}), "
            f"which is needed {tokenizer_needed}"
        )
    # Only herd and HF folders hold reward models (and their configs read without the weights).
    found = read_config(path, fmt).head if fmt in ("herd", "hf") else "lm"
    if found != head:  # before the weights are read
        kinds = {"lm": "a language model", "score": "a reward model"}
        hint = " (`herd rm score` scores with it)" if found == "score" else ""
        raise HerdError(f"{path}: {kinds[found]}, but this command needs {kinds[head]}{hint}")
    tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file else None
    return load(path, chosen, dtype_name), tokenizer, chosen


def load_weights(model: torch.nn.Module, path: str | Path, new: tuple[str, ...] = ()) -> None:
    """Copy the weights of the checkpoint at `path` (any format `herd.load` reads) into `model`,
    which was built for the same architecture (fine-tuning starts from a pretrained model).
    Parameters whose names start with a prefix in `new` are parts the checkpoint lacks (an image
    adapter added to a text model): they keep their initialisation."""
    from herd.checkpoint.convert import read_checkpoint

    source, state = read_checkpoint(path)
    # a tied output projection is the embedding, once
    own = {n: p for n, p in model.named_parameters() if not n.startswith(new)}
    config = getattr(model, "config", None)
    if config is not None and config.head != source.head:
        # A reward model started from a language model (Llama 2 section 3.2.2): the body is the
        # checkpoint's, the new head keeps its initialisation (and the other way round).
        # (A tied output is not among named_parameters: the embedding it shares is loaded.)
        state = {k: v for k, v in state.items() if k != "output.weight"}
        own.pop("output.weight", None)
    missing = sorted(set(own) - set(state))
    if missing:
        raise HerdError(f"{path}: has no weight '{missing[0]}' for the model being trained")
    for name, tensor in state.items():
        if name not in own:
            raise HerdError(f"{path}: weight '{name}' is not in the model being trained")
        # shapes checked for all before any is copied: a failed start changes nothing
        if tensor.shape != own[name].shape:
            raise HerdError(
                f"{path}: weight '{name}' has shape {tuple(tensor.shape)}, the model being "
                f"trained {tuple(own[name].shape)} ([model] overrides must keep the shapes)"
            )
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(state[name])
