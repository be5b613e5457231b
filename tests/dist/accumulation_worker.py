"""Run by tests/dist/test_accumulation.py under torchrun (two gloo processes): one step's
gradients and loss for every objective at (batch 2, grad_accum 4) and (batch 8, grad_accum 1),
in float64, gathered from the FSDP2 shards and written by rank 0 to OUT/grads.safetensors."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from tests.unit.test_train_step import OBJECTIVES, _gradients, _trainer


def main(data: Path, out: Path) -> None:
    results = {}
    for objective in OBJECTIVES:
        for batch, accum in ((2, 4), (8, 1)):
            trainer = _trainer(data, out / f"{objective}-{accum}", objective, batch, accum)
            loss, grads, _ = _gradients(trainer)
            key = f"{objective}/{accum}"
            results[f"{key}/loss"] = torch.tensor([loss], dtype=torch.float64)
            for name, g in grads.items():
                results[f"{key}/{name}"] = g.full_tensor() if hasattr(g, "full_tensor") else g
    if dist.get_rank() == 0:
        save_file({k: v.contiguous() for k, v in results.items()}, out / "grads.safetensors")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
