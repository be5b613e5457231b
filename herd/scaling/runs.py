"""Scaling data points: from herd run folders or CSV files, and IsoFLOP sweeps of herd runs.

A run folder gives one point: parameters (the resolved config, the vocabulary from the data's
tokenizer, counted as `herd info` does), tokens trained and final validation loss (the last
`val_loss` in metrics.jsonl), and FLOPs from `ModelConfig.flops_per_token`. A CSV has a header with
`params,tokens,loss` and optionally `modality`, `flops`, `tokens_i`, `tokens_j`; downstream fits read
`flops,nll,accuracy` from a CSV or from `herd eval --out` files of training checkpoints.

`sweep` trains, for every compute budget C and model size N, a herd model on D = C / (6 N) tokens,
one run folder each under OUT/runs/; a finished run (its metrics reach the planned step with a
validation loss) is skipped, an interrupted one resumes from its last checkpoint, so rerunning the
command after a crash continues the study.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from herd.errors import HerdError
from herd.train.runlog import read_jsonl

FLOAT_COLUMNS = ("params", "tokens", "loss", "flops", "tokens_i", "tokens_j", "nll", "accuracy")


def read_csv(path: Path, required: tuple[str, ...] = ("params", "tokens", "loss")) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HerdError(f"{path}: not a UTF-8 text file") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise HerdError(f"{path}: no '{missing[0]}' column (expected {', '.join(required)})")
    rows = []
    for number, row in enumerate(reader, start=2):
        out: dict = {}
        for key, value in row.items():
            if key in FLOAT_COLUMNS and value not in (None, ""):
                try:
                    out[key] = float(value)
                except ValueError:
                    raise HerdError(f"{path}:{number}: {key} '{value}' is not a number") from None
                if math.isnan(out[key]):
                    raise HerdError(f"{path}:{number}: {key} is NaN")
            elif key is not None:
                out[key] = value
        rows.append(out)
    if not rows:
        raise HerdError(f"{path}: no data rows")
    return rows


def read_run(folder: Path) -> dict:
    """{'params', 'tokens', 'loss', 'flops', 'run'} of a finished herd run folder."""
    from herd.data.shards import TokenShards
    from herd.train.config import load_run_config

    config_path = folder / "config.toml"
    metrics_path = folder / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise HerdError(f"{folder}: not a herd run folder (no config.toml / metrics.jsonl)")
    run = load_run_config(str(config_path))
    vocab = TokenShards(run.data.path).manifest["tokenizer"]["vocab_size"]
    model = run.model_config(vocab_size=vocab)
    rows = read_jsonl(metrics_path)
    val = [r for r in rows if "val_loss" in r]
    if not val:
        raise HerdError(f"{metrics_path}: no validation loss yet (the run has not evaluated)")
    last = val[-1]
    if not math.isfinite(last["val_loss"]):
        raise HerdError(f"{metrics_path}: the last validation loss is {last['val_loss']}")
    tokens = float(last["tokens"])
    return {
        "params": float(model.num_params()),
        "tokens": tokens,
        "loss": float(last["val_loss"]),
        "flops": model.flops_per_token(run.data.seq_len) * tokens,
        "run": str(folder),
    }


def read_eval(path: Path) -> dict:
    """A downstream point from a `herd eval --out` file of a training checkpoint: the compute
    that produced the checkpoint, the mean normalised NLL of the correct answer (letter scoring:
    -log p of its letter; answer scoring: per UTF-8 byte), and the accuracy."""
    from herd.data.shards import TokenShards
    from herd.train.config import load_run_config

    try:
        record = json.loads(path.read_text())
        checkpoint = Path(record["checkpoint"])
        items = record["results"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HerdError(f"{path}: not a `herd eval --out` multiple-choice result") from None
    state = checkpoint / "train_state" / "state.json"
    config = checkpoint.parent.parent / "config.toml"
    if not state.is_file() or not config.is_file():
        raise HerdError(
            f"{path}: checkpoint {checkpoint} is not a step folder of a herd run (needs "
            "train_state/state.json and the run's config.toml) to know its training compute"
        )
    run = load_run_config(str(config))
    vocab = TokenShards(run.data.path).manifest["tokenizer"]["vocab_size"]
    tokens = json.loads(state.read_text())["tokens"]
    flops = run.model_config(vocab_size=vocab).flops_per_token(run.data.seq_len) * tokens
    nll = [-(r["scores"][r["answer"]]) for r in items]
    return {
        "flops": float(flops),
        "nll": float(sum(nll) / len(nll)),
        "accuracy": sum(r["correct"] for r in items) / len(items),
        "eval": str(path),
    }


def read_points(sources: list[str], required=("params", "tokens", "loss")) -> list[dict]:
    points: list[dict] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix == ".json":
            points.append(read_eval(path))
        elif path.is_file() and path.suffix == ".csv":
            points.extend(read_csv(path, required))
        elif path.is_dir() and (path / "runs").is_dir() and not (path / "config.toml").exists():
            points.extend(read_run(p) for p in sorted((path / "runs").iterdir()) if p.is_dir())
        elif path.is_dir():
            points.append(read_run(path))
        else:
            raise HerdError(f"{path}: expected a herd run folder, a sweep folder or a .csv file")
    return points


def plan_sweep(
    flops: list[float], sizes: list[float], vocab_size: int, seq_len: int, batch_size: int
) -> list[dict]:
    """One entry per (budget, size): the architecture, its parameter count and the step count."""
    from herd.scaling.plan import nearest_architecture

    entries = []
    for c in flops:
        for n in sizes:
            config, count = nearest_architecture(n, vocab_size, seq_len)
            steps = max(1, round(c / (6 * count) / (batch_size * seq_len)))
            entries.append(
                {
                    "flops": c,
                    "params": count,
                    "steps": steps,
                    "model": {
                        "dim": config.dim,
                        "n_layers": config.n_layers,
                        "n_heads": config.n_heads,
                        "n_kv_heads": config.n_kv_heads,
                        "ffn_dim": config.ffn_dim,
                    },
                    "name": f"c{c:.1e}-n{count}".replace("+", ""),
                }
            )
    return entries


def _finished(run_dir: Path, steps: int) -> bool:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return any(r.get("step") == steps and "val_loss" in r for r in rows)


def sweep(
    data: str,
    flops: list[float],
    sizes: list[float],
    out: Path,
    seq_len: int = 64,
    batch_size: int = 8,
    lr: float = 3e-3,
    show_progress: bool = True,
) -> list[dict]:
    """Run (or resume, or skip) every planned run; returns the points."""
    from herd.data.shards import TokenShards
    from herd.train.config import load_run_config
    from herd.train.trainer import Trainer

    vocab = TokenShards(data).manifest["tokenizer"]["vocab_size"]
    entries = plan_sweep(flops, sizes, vocab, seq_len, batch_size)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(entries, indent=1))
    for k, e in enumerate(entries):
        run_dir = out / "runs" / e["name"]
        if _finished(run_dir, e["steps"]):
            print(f"[{k + 1}/{len(entries)}] {e['name']}: finished, skipped")
            continue
        resume = any((run_dir / "checkpoints").glob("step-*"))
        print(
            f"[{k + 1}/{len(entries)}] {e['name']}: {e['params']:,} parameters, {e['steps']} "
            f"steps{' (resuming)' if resume else ''}"
        )
        overrides = {f"model.{key}": str(v) for key, v in e["model"].items()}
        overrides.update(
            {
                "model.vocab_size": str(vocab),
                "model.max_seq_len": str(seq_len),
                "model.tie_embeddings": "false",
                "data.path": str(data),
                "data.seq_len": str(seq_len),
                "data.batch_size": str(batch_size),
                "train.steps": str(e["steps"]),
                "train.eval_every": str(e["steps"]),
                "train.checkpoint_every": str(max(1, e["steps"] // 4)),
                "train.keep_checkpoints": "1",
                "train.log_every": str(max(1, e["steps"] // 20)),
                "train.out": str(run_dir),
                "train.eval_batches": "8",
                "optim.lr": str(lr),
                "optim.warmup_steps": str(max(1, e["steps"] // 20)),
            }
        )
        run = load_run_config(None, overrides)
        Trainer(run, run_dir, resume=resume).fit(show_progress=show_progress)
    return [read_run(out / "runs" / e["name"]) for e in entries]
