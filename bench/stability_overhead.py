"""Stability-monitor overhead: training steps of the `demo` preset on CPU with `[stability]` at
its default cadence against the same run with it disabled, in one process.

    .venv/bin/python bench/stability_overhead.py                 # 300 steps each, 2 rounds
    .venv/bin/python bench/stability_overhead.py --steps 200 --out /tmp/overhead.json

Both trainers run the same data, seed and schedule on the stdlib corpus prepared by `herd demo`
(or any `herd data prepare` folder given with --data; without either, it prepares 300
standard-library files itself); they alternate in blocks of `--block`
steps so machine noise hits both alike. Overhead = monitored / unmonitored mean step time - 1;
on a shared 2-core machine that moves by +-5% between runs, so the script also prints the cost of
the only steps that do extra work (the monitored ones and the steps before them) spread over the
cadence.
Target: at most 3% at the default cadence (every 100 steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def prepare_stdlib(folder: Path) -> str:
    """Shards of 300 standard-library files with a 4,096-token BPE, when `herd demo` has not run."""
    from herd.data.shards import prepare
    from herd.data.sources import stdlib_files
    from herd.vocab.bpe import train_bpe

    print(f"no prepared shards: tokenizing 300 standard-library files into {folder}")
    files = stdlib_files()[:300]
    train_bpe(files, 4096, folder / "tokenizer", overwrite=True, show_progress=False)
    prepare([str(f) for f in files], folder / "tokenizer", folder / "data", show_progress=False)
    return str(folder / "data")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared token shards (default: runs/demo/data, or when `herd demo` has not run, "
        "300 standard-library files prepared in a temporary folder)",
    )
    p.add_argument("--steps", type=int, default=300, help="timed steps per trainer")
    p.add_argument("--block", type=int, default=50, help="consecutive steps per turn")
    p.add_argument(
        "--every", type=int, default=None, help="monitor cadence (default: the config default)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)
    scratch = tempfile.TemporaryDirectory()
    if args.data is None:
        demo = Path("runs/demo/data")
        args.data = str(demo) if (demo / "manifest.json").is_file() else None
        args.data = args.data or prepare_stdlib(Path(scratch.name))
    elif not (Path(args.data) / "manifest.json").is_file():
        p.error(f"--data {args.data}: no manifest.json (not a `herd data prepare` folder)")

    from herd.train.config import StabilityConfig, load_run_config
    from herd.train.trainer import Trainer

    every = args.every or StabilityConfig().every
    times: dict[str, list[float]] = {"monitored": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, enabled in (("monitored", "true"), ("plain", "false")):
            overrides = {
                "model.preset": "demo",
                "data.path": args.data,
                "data.seq_len": "256",
                "data.batch_size": "4",
                "train.steps": str(args.steps + 10),
                "train.log_every": "1000000",
                "train.eval_every": "1000000",
                "train.checkpoint_every": "1000000",
                "train.out": f"{tmp}/{name}",
                "stability.enabled": enabled,
                "stability.every": str(every),
            }
            trainers[name] = Trainer(load_run_config(None, overrides), Path(tmp) / name)
            for _ in range(5):  # warm-up
                trainers[name].train_step()
                trainers[name].verdicts.read()
        done = 0
        while done < args.steps:
            n = min(args.block, args.steps - done)
            for name, trainer in trainers.items():
                for _ in range(n):
                    start = time.perf_counter()
                    trainer.train_step()
                    trainer.verdicts.read()  # waits for the device (a step only queues work)
                    times[name].append(time.perf_counter() - start)
            done += n
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    overhead = mean["monitored"] / mean["plain"] - 1
    # Step i of the timed loop is trainer step i + 5 (after the warm-up): the monitored steps and
    # the steps before them (which keep the gradients) are the only ones that do extra work.
    monitored_steps = [t for i, t in enumerate(times["monitored"]) if (i + 6) % every == 0]
    snapshot_steps = [t for i, t in enumerate(times["monitored"]) if (i + 7) % every == 0]
    extra = None
    if monitored_steps and snapshot_steps:
        # The noise-robust estimate: what those two steps cost beyond a plain step, per `every`.
        excess = statistics.fmean(monitored_steps) + statistics.fmean(snapshot_steps)
        extra = (excess - 2 * mean["plain"]) / every / mean["plain"]
    result = {
        "steps": args.steps,
        "every": every,
        "mean_step_ms": {k: 1e3 * v for k, v in mean.items()},
        "overhead": overhead,
        "monitored_step_ms": 1e3 * statistics.fmean(monitored_steps) if monitored_steps else None,
        "snapshot_step_ms": 1e3 * statistics.fmean(snapshot_steps) if snapshot_steps else None,
        "overhead_from_extra_work": extra,
    }
    print(f"demo preset, batch 4 x 256, {args.steps} steps each, monitor every {every} steps")
    print(
        f"mean step: monitored {result['mean_step_ms']['monitored']:.1f} ms, "
        f"plain {result['mean_step_ms']['plain']:.1f} ms -> overhead {100 * overhead:+.2f}% "
        f"(target <= 3%)"
    )
    if extra is not None:
        print(
            f"monitored steps {result['monitored_step_ms']:.0f} ms, the steps before them "
            f"{result['snapshot_step_ms']:.0f} ms -> their extra work costs {100 * extra:+.2f}% "
            f"of training time at this cadence (the estimate machine noise moves least)"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
