"""DPO's reference log-probabilities: computed once, stored beside the data, reused.

The reference model's log-probs of every preference pair do not change during training, so they
are computed once (`reference_logps`: no gradient, pairs sorted by length into forwards as large
as allowed, results in data order) and read at every step of every epoch: no second copy of the
weights is kept (with LoRA the reference is the same model with its adapters disabled, a context).

Where they live (`reference_folder`): beside the data, in `PATH.herd-reference/` for a local
`data.path` (a file or a folder), one `reference_logps-FINGERPRINT.safetensors` per pair set
(training, held out) and reference, so every run from the same start on the same pairs (an alpha
or learning-rate sweep) reads the table the first one computed. The fingerprint
(`reference_fingerprint`) covers whatever changes the numbers; it is stored in the table's
metadata with a checksum of the rows, and a table stored for anything else, damaged or
unreadable, is recomputed, never read. A Hugging Face dataset name, or a data folder that cannot
be written, keeps them in the run folder. An interrupted computation resumes from the pairs
stored. The run folder's `reference.json` names the tables a run used (`reference_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from herd.atomic_files import write_file_atomically
from herd.errors import HerdError
from herd.posttrain.dpo import PreferenceBatch, preference_logps
from herd.posttrain.preference_batches import PreferenceBatches

REFERENCE_SUFFIX = ".herd-reference"  # pairs.jsonl -> pairs.jsonl.herd-reference/
REFERENCE_RECORD = "reference.json"  # in the run folder: the tables the run used
# Positions per forward of the reference pass, in training batches at full length ([2 x
# batch_size, seq_len]). It runs without autograd, so each layer's activations are freed once the
# next layer has them: a forward of 4 batches costs less memory than a training step of one, which
# keeps every layer's for the backward pass, and fills an accelerator better. Not on CPU, where
# larger forwards outgrow the caches: dim 256, 4 layers, 400 pairs on 1 thread took 23 s at 4
# batches per forward, 17-18 s at 1, and 22-24 s batch by batch unsorted (the pass before).
REFERENCE_BATCHES = 4
REFERENCE_BATCHES_CPU = 1
# Pairs read, sorted by length and stored together: the sort spans this many training batches,
# and a killed pass loses at most one window of work.
REFERENCE_WINDOW = 16


# --- where the reference tables live, and what they were computed from ---------------------------


def reference_folder(data_path: str, run_dir: Path) -> tuple[Path, str]:
    """The folder of the reference tables of the pairs at `data_path`, and why it is that one:
    `PATH.herd-reference/` beside a local file or folder, shared by every run on those pairs; the
    run folder for a Hugging Face dataset name, or when the data's folder cannot be written."""
    path = Path(data_path)
    if not path.exists():
        return Path(run_dir), f"data.path '{data_path}' is not a local file or folder"
    path = path.resolve()
    folder = path.with_name(path.name + REFERENCE_SUFFIX)
    try:
        folder.mkdir(exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()  # writable in fact, not only by its mode
    except OSError as e:
        return Path(run_dir), f"{folder} cannot be written ({e.strerror or e})"
    return folder, "beside the data"


def start_stamp(checkpoint: str | Path) -> dict:
    """The start checkpoint as the fingerprint sees it: its resolved path and every file's name,
    size and mtime_ns. Rewriting a weight file changes its mtime_ns; hashing gigabytes of weights
    would cost about what reusing the table saves. A LoRA checkpoint of adapters adds its base."""
    path = Path(checkpoint).resolve()
    if path.is_file():  # a llama2.c .bin
        files = [(path.name, path)]
    else:  # hidden entries (download caches, locks) change nothing the model reads
        files = [
            (str(f.relative_to(path)), f)
            for f in sorted(path.rglob("*"))
            if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
        ]
    stamp: dict = {"path": str(path), "files": []}
    for name, f in files:
        stat = f.stat()
        stamp["files"].append([name, stat.st_size, stat.st_mtime_ns])
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except (ValueError, AttributeError):
            base = None  # loading the start reports it
        if isinstance(base, str) and base and Path(base).exists() and Path(base).resolve() != path:
            stamp["base"] = start_stamp(base)
    return stamp


def pairs_sha256(examples) -> str:
    """SHA-256 of the pairs' token ids and masks, in order (row i of a table is pair i): the
    data file, tokenizer, chat format, seq_len and held-out split all act through these."""
    digest = hashlib.sha256()
    for e in examples:
        for part in (e.prompt_ids, e.chosen_ids, e.chosen_mask, e.rejected_ids, e.rejected_mask):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(array("q", part).tobytes())
    return digest.hexdigest()


def reference_fingerprint(
    start: dict, pairs: PreferenceBatches, model: torch.nn.Module, device: torch.device
) -> dict[str, str]:
    """What the numbers of a reference table depend on, as safetensors metadata (strings), and
    `fingerprint`, their hash, which names the file: the start's files, the architecture as
    built (a [model] override such as rope_theta included), the pairs' tokens, and how the pass
    computes (device type, parameter dtype, autocast dtype). LoRA is left out on purpose: its
    adapters start with B = 0, so at the start the policy computes exactly the base's
    log-probs, and a LoRA run shares the table of a full fine-tune from the same start."""
    autocast = torch.is_autocast_enabled(device.type)
    compute = {
        "device": device.type,
        "params": sorted({str(p.dtype) for p in model.parameters()}),
        "autocast": str(torch.get_autocast_dtype(device.type)) if autocast else "off",
    }
    config = getattr(model, "config", None)
    inputs = {
        "format": REFERENCE_FORMAT,
        "start": json.dumps(start, sort_keys=True),
        "model": json.dumps(config.to_dict() if config is not None else None, sort_keys=True),
        "compute": json.dumps(compute, sort_keys=True),
        "pairs_sha256": pairs_sha256(pairs.examples),
        "pair_count": str(len(pairs.examples)),
    }
    inputs["fingerprint"] = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return inputs


def reference_files(run_dir: str | Path) -> dict[str, Path]:
    """The reference tables a `herd dpo` run used: {"train": PATH, "val": PATH} ("val" only
    with held-out pairs), from its `reference.json` (or the fixed names in the run folder that
    runs made before the tables moved beside the data). Read one with `load_reference_logps`:
    [pairs, 2] float32, columns (chosen, rejected), row i = pair i of that set in data order."""
    run_dir = Path(run_dir)
    record = run_dir / REFERENCE_RECORD
    if not record.is_file():
        legacy = {
            "train": run_dir / "reference_logps.safetensors",
            "val": run_dir / "reference_logps_val.safetensors",
        }
        found = {name: path for name, path in legacy.items() if path.is_file()}
        if not found:
            raise HerdError(f"{record}: not found (not a `herd dpo` run folder, or not started)")
        return found
    try:
        tables = json.loads(record.read_text())["tables"]
        return {name: Path(t["path"]) for name, t in tables.items()}
    except (ValueError, KeyError, TypeError) as e:
        raise HerdError(f"{record}: malformed ({e!r})") from None


# --- reference log-probs, computed once -----------------------------------------------------

REFERENCE_KEY = "reference_logps"
# Bumped whenever the same inputs would give other numbers (the pass's arithmetic) or the file's
# layout changes: a table of another format is recomputed, never read.
REFERENCE_FORMAT = "2"


def _rows_sha256(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def _save_reference(
    path: Path, rows: torch.Tensor, complete: bool, fingerprint: Mapping[str, str] | None = None
) -> None:
    """The rows so far (or all of them) with the fingerprint of what they were computed from,
    the format, and a checksum of the rows, all in the safetensors metadata."""
    from safetensors.torch import save

    rows = rows.float().contiguous()
    meta = {
        **(fingerprint or {}),
        "format": REFERENCE_FORMAT,
        "complete": "true" if complete else "false",
        "pairs": str(rows.shape[0]),
        "rows_sha256": _rows_sha256(rows),
    }
    data = save({REFERENCE_KEY: rows}, metadata=meta)
    write_file_atomically(Path(path), lambda f: f.write(data))


def _read_reference(path: Path, fingerprint: Mapping[str, str] | None) -> tuple[torch.Tensor, bool]:
    """(rows, complete) of a stored table; HerdError saying why it cannot be used: unreadable,
    damaged (rows that do not match their checksum), or written for another fingerprint."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            rows = f.get_tensor(REFERENCE_KEY)
    except FileNotFoundError:
        raise HerdError(f"{path}: not found") from None
    except Exception as e:  # safetensors raises its own types for damaged files
        raise HerdError(f"{path}: not a readable reference table ({e})") from None
    if rows.ndim != 2 or rows.shape[1] != 2 or rows.dtype != torch.float32:
        raise HerdError(f"{path}: '{REFERENCE_KEY}' is {rows.dtype} {tuple(rows.shape)}")
    if meta.get("pairs", str(rows.shape[0])) != str(rows.shape[0]):
        raise HerdError(f"{path}: {rows.shape[0]} rows, its metadata says {meta['pairs']}")
    if "rows_sha256" in meta and meta["rows_sha256"] != _rows_sha256(rows):
        raise HerdError(f"{path}: damaged (its rows do not match their checksum)")
    if fingerprint is not None:
        for key, value in {**fingerprint, "format": REFERENCE_FORMAT}.items():
            if meta.get(key) != value:
                raise HerdError(f"{path}: computed for another {key}")
    return rows, meta.get("complete") == "true"


def load_reference_logps(
    path: str | Path, partial: bool = False, fingerprint: Mapping[str, str] | None = None
) -> torch.Tensor:
    """The stored reference log-probs [N, 2] (float32; columns chosen, rejected; row i = pair i
    in data order). A file that `reference_logps` has not finished is refused unless `partial`;
    with `fingerprint`, so is one computed for anything else (each of its keys is compared)."""
    path = Path(path)
    rows, complete = _read_reference(path, fingerprint)
    if not complete and not partial:
        raise HerdError(f"{path}: reference log-probs incomplete ({rows.shape[0]} pairs so far)")
    return rows


def _scored_width(mask: torch.Tensor) -> torch.Tensor:
    """Per row [B], the positions its log-prob needs: up to its last scored token (a position
    past it changes nothing before it under causal attention, so it is cut off)."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (positions * mask.bool()).amax(dim=1).clamp(min=1)


def _window_logps(
    model: Callable[..., torch.Tensor],
    batch: PreferenceBatch,
    pad_id: int,
    max_tokens: int | None,
    device: torch.device | None,
) -> torch.Tensor:
    """[B, 2] (chosen, rejected) log-probs of a batch, in its order, from forwards over its pairs
    sorted by length, each cut to its longest scored row and holding at most `max_tokens`
    positions ([2 x pairs, width]; at least one pair): little padding, and forwards as large as
    the caller allows (without autograd they hold one layer's activations at a time)."""
    width = torch.maximum(_scored_width(batch.chosen_mask), _scored_width(batch.rejected_mask))
    order = torch.argsort(width, stable=True)
    widths = width[order].tolist()
    out = torch.empty(len(widths), 2)
    start = 0
    while start < len(widths):
        stop = start + 1  # ascending widths: a group is as wide as its last pair
        while stop < len(widths) and (
            max_tokens is None or 2 * (stop + 1 - start) * widths[stop] <= max_tokens
        ):
            stop += 1
        rows, w = order[start:stop], widths[stop - 1]
        part = PreferenceBatch(*(t[rows, :w] for t in batch))
        if device is not None:
            part = PreferenceBatch(*(t.to(device) for t in part))
        logps = preference_logps(model, part, pad_id)
        out[rows] = torch.stack([logps.chosen, logps.rejected], dim=1).float().cpu()
        start = stop
    return out


def reference_logps(
    model: Callable[..., torch.Tensor],
    batches: Iterable[PreferenceBatch],
    path: str | Path | None = None,
    context: Callable[[], contextlib.AbstractContextManager] | None = None,
    pad_id: int = 0,
    save_every: int = 16,
    fingerprint: Mapping[str, str] | None = None,
    max_tokens: int | None = None,
    device: torch.device | None = None,
    write: bool = True,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Reference log-probs of every pair, [N, 2] float32 on CPU (chosen, rejected), no gradient.

    `model` is the reference: a separate frozen copy, or the policy itself with `context` a
    zero-argument callable returning the context under which it acts as the reference (with
    LoRA: its adapters disabled). `batches` come in data order; each is scored by
    `_window_logps` (sorted by length, forwards of at most `max_tokens` positions, moved to
    `device`), so results do not depend on how the pairs are batched beyond float rounding.

    With `path` the rows are read from there when a complete table for `fingerprint` (string
    metadata naming what the numbers were computed from) is stored, and resumed from the pairs
    already stored when a partial one is; a table that is unreadable, damaged or for another
    fingerprint is recomputed, not trusted. With `write` too, the rows are stored there
    (safetensors, atomically, the fingerprint in the metadata) every `save_every` batches and at
    the end. `log` hears what was found.
    """
    path = Path(path) if path is not None else None
    say = log or (lambda _: None)
    done = torch.zeros(0, 2)
    if path is not None and path.exists():
        try:
            done, complete = _read_reference(path, fingerprint)
        except HerdError as e:
            say(f"{e}: recomputing it")
        else:
            if complete:
                say(f"reusing {path} ({done.shape[0]} pairs)")
                return done
            say(f"resuming {path} after the {done.shape[0]} pairs stored")
    elif path is not None:
        say(f"computing {path}")
    stored = done.shape[0]
    rows, seen, since_save = [done], 0, 0
    # inference_mode, not just no_grad: no version counters or views tracked for autograd. The
    # rows leave it through torch.cat below, outside it, so the table is an ordinary tensor.
    with torch.inference_mode(), (context or contextlib.nullcontext)():
        for batch in batches:
            batch = PreferenceBatch(*batch)
            B = batch.chosen_ids.shape[0]
            skip = min(max(stored - seen, 0), B)  # pairs stored by an earlier run
            seen += B
            if skip == B:
                continue
            if skip:
                batch = PreferenceBatch(*(t[skip:] for t in batch))
            rows.append(_window_logps(model, batch, pad_id, max_tokens, device))
            since_save += 1
            if path is not None and write and since_save == save_every:
                _save_reference(path, torch.cat(rows), False, fingerprint)
                since_save = 0
    if seen < stored:
        raise HerdError(f"{path}: holds {stored} pairs, the data only {seen}")
    result = torch.cat(rows)
    if path is not None and write:
        _save_reference(path, result, True, fingerprint)
    return result


def reference_pass(
    model,
    pairs: PreferenceBatches,
    batch_size: int,
    seq_len: int,
    device,
    path: Path | None = None,
    fingerprint: dict[str, str] | None = None,
    write: bool = True,
    log=None,
) -> torch.Tensor:
    """The reference log-probs of every pair of `pairs` in data order: windows of
    REFERENCE_WINDOW batches, each sorted by length into forwards of at most REFERENCE_BATCHES
    (on CPU REFERENCE_BATCHES_CPU) full-length batches' positions, stored after every window."""
    window = REFERENCE_WINDOW * batch_size
    on_cpu = device is None or torch.device(device).type == "cpu"
    per_forward = REFERENCE_BATCHES_CPU if on_cpu else REFERENCE_BATCHES
    return reference_logps(
        model,
        (PreferenceBatch(*b.tensors()[:4]) for b in pairs.in_order(window)),
        path=path,
        pad_id=pairs.pad_id,
        save_every=1,
        fingerprint=fingerprint,
        max_tokens=per_forward * batch_size * 2 * seq_len,
        device=device,
        write=write,
        log=log,
    )


def record_tables(run_dir: Path, folder: Path, tables: dict, fresh: bool) -> None:
    """Write reference.json; a resumed run whose start or data changed says so."""
    record = run_dir / REFERENCE_RECORD
    if not fresh and record.is_file():
        try:
            before = {
                n: t["fingerprint"] for n, t in json.loads(record.read_text())["tables"].items()
            }
        except (ValueError, KeyError, TypeError):
            before = {}
        now = {n: t["fingerprint"] for n, t in tables.items()}
        if before and before != now:
            print(
                "dpo reference: the start or the pairs changed since this run began; its "
                "reference is now that of the start as it is",
                file=sys.stderr,
            )
    text = json.dumps({"folder": str(folder), "tables": tables}, indent=2) + "\n"
    write_file_atomically(record, lambda f: f.write(text.encode()))
