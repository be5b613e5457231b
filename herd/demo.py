"""`herd demo`: the main job on an embedded default, with no download.

Until pretraining lands this builds the `demo` preset (15M parameters, llama2.c stories15M shape)
with herd's documented initialisation, writes it as a herd checkpoint folder, reloads it, prints its
architecture and decodes a few tokens greedily, reporting the decode speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from herd.checkpoint.convert import load
from herd.checkpoint.io import save_herd_folder
from herd.generate import stream_generate
from herd.info import describe, format_table
from herd.model.transformer import build_model
from herd.presets import preset


def run_demo(out: str | Path, max_new_tokens: int = 32) -> None:
    config = preset("demo")
    model = build_model(config, seed=0)
    folder = save_herd_folder(config, model.state_dict(), Path(out), overwrite=True)
    print(f"wrote a freshly initialised demo checkpoint to {folder}\n")
    print(format_table("demo", describe(config)))
    model = load(folder)
    prompt = [1, 450, 4996, 17354, 1701]  # token ids; tokenizers arrive with the next stage
    print(f"\ngreedy decode of {max_new_tokens} tokens after {prompt} (random weights):")
    start = time.perf_counter()
    count = 0
    for ids in stream_generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.0):
        print(ids[0], end=" ", flush=True)
        count += 1
    elapsed = time.perf_counter() - start
    threads = torch.get_num_threads()
    print(
        f"\n{count} tokens in {elapsed:.2f} s ({count / elapsed:.0f} tokens/s, CPU, "
        f"{threads} threads, eager)"
    )
