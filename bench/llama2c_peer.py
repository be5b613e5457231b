"""llama2.c as bench/generate.py's third engine: its model file written from a herd model, its
`run` binary timed, and the text it prints predicted from token ids, so its output can be compared
with herd's on the same weights.

llama2.c (Karpathy) reads a legacy (v0) file: seven int32 header fields, then float32 tensors
stacked per kind; `run` prints "achieved tok/s" on stderr and the decoded text on stdout.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch

import herd
from herd.model.rope import half_to_interleaved, rope_table
from herd.model.transformer import Transformer

BOS = 1  # llama2.c's BOS id (the Llama 2 sentencepiece vocabulary); `run` stops when it is drawn


def write_llama2c(model: Transformer, path: Path) -> None:
    """Write `model` as a llama2.c legacy (v0) file: 7 int32 then fp32 tensors, stacked per kind.

    llama2.c applies RoPE to adjacent pairs (Meta's interleaved layout); herd stores q/k rows in the
    half-split layout, so those rows are permuted back. A negative vocab size in the header marks an
    unshared classifier, stored last.
    """
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    shared = c.tie_embeddings
    header = (c.dim, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len)
    if not shared:
        header = (*header[:5], -c.vocab_size, header[6])
    layers = range(c.n_layers)

    def stacked(name: str, fix: Callable[[torch.Tensor], torch.Tensor] | None = None):
        return [fix(sd[f"layers.{i}.{name}"]) if fix else sd[f"layers.{i}.{name}"] for i in layers]

    table = rope_table(c)  # [max_seq_len, 2, head_dim/2]: cos, sin (run.c skips them)
    tensors = [sd["embed.weight"]]
    tensors += stacked("attn_norm.weight")
    tensors += stacked("attn.wq.weight", lambda w: half_to_interleaved(w, c.n_heads))
    tensors += stacked("attn.wk.weight", lambda w: half_to_interleaved(w, c.n_kv_heads))
    tensors += stacked("attn.wv.weight")
    tensors += stacked("attn.wo.weight")
    tensors += stacked("ffn_norm.weight")
    tensors += stacked("ffn.w1.weight")
    tensors += stacked("ffn.w2.weight")
    tensors += stacked("ffn.w3.weight")
    tensors += [sd["norm.weight"], table[:, 0, :], table[:, 1, :]]
    if not shared:
        tensors.append(sd["output.weight"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", *header))
        for t in tensors:
            f.write(t.contiguous().numpy().astype("<f4", copy=False).tobytes())


@torch.inference_mode()
def verify_llama2c(model: Transformer, path: Path, prompt: list[int]) -> float:
    """Max |logits difference| between `model` and the file reloaded by herd.load."""
    reloaded = herd.load(path)
    tokens = torch.tensor([prompt + list(range(2, 18))])
    return float((model(tokens) - reloaded(tokens)).abs().max())


def read_llama2c_vocab(path: Path) -> list[bytes]:
    """Token pieces of a llama2.c tokenizer.bin: int32 max length, then (fp32 score, int32 n, bytes)."""
    data = path.read_bytes()
    vocab, offset = [], 4
    while offset < len(data):
        _, n = struct.unpack_from("<fi", data, offset)
        offset += 8
        vocab.append(data[offset : offset + n])
        offset += n
    return vocab


def llama2c_text(vocab: list[bytes], tokens: list[int]) -> bytes:
    """What llama2.c's run prints for this token sequence (its decode + safe_printf rules)."""
    out = []
    for prev, tok in itertools.pairwise(tokens):
        if tok == BOS:  # run.c stops at BOS
            break
        piece = vocab[tok]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        m = re.match(rb"<0x([0-9A-Fa-f]{1,2})", piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        piece = piece.split(b"\0", 1)[0]
        if len(piece) == 1 and not (0x20 <= piece[0] <= 0x7E or 0x09 <= piece[0] <= 0x0D):
            continue  # a lone byte that C's isprint/isspace reject is not printed
        out.append(piece)
    return b"".join(out) + b"\n"


def run_llama2c(
    binary: Path,
    model_file: Path,
    tokenizer: Path,
    prompt_text: str,
    steps: int,
    threads: int,
    repeats: int,
) -> tuple[list[float], bytes]:
    """tok/s of each of `repeats` runs of llama2.c's `run` (its own "achieved tok/s" line)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [str(binary), str(model_file), "-t", "0", "-n", str(steps), "-s", "1"]
    cmd += ["-i", prompt_text, "-z", str(tokenizer)]
    rates, stdout = [], b""
    for _ in range(repeats + 1):  # the first run warms the page cache and is dropped
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600, check=False)
        err = proc.stderr.decode(errors="replace")
        m = re.search(r"achieved tok/s:\s*([0-9.eE+-]+)", err)
        if proc.returncode != 0 or not m:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{err[-2000:]}")
        rates.append(float(m.group(1)))
        stdout = proc.stdout
    return rates[1:], stdout
