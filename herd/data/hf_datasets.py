"""Rows of a Hugging Face dataset: a name on the Hub (or in the local caches, offline), or a folder
written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

A name goes to `datasets.load_dataset(name, split=..., streaming=True)`: online it streams from
the Hub; offline (HF_HUB_OFFLINE=1) `datasets` looks only in its own prepared cache
(HF_DATASETS_CACHE, written by an earlier non-streaming `load_dataset(name)`), not in the Hub's
file cache (HF_HUB_CACHE) where `hf download --repo-type dataset NAME` and `snapshot_download` put
a dataset's files (datasets 5.2). So when that call cannot reach the Hub and the Hub cache holds a
snapshot of the dataset, the snapshot's folder is loaded instead, with its README's
configurations and split file names, as the Hub would serve it. A saved folder is read with
`datasets.load_from_disk` (its Arrow files are memory-mapped, nothing is copied). `datasets` is
needed for both, imported only then.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from herd.errors import HerdError

# What `save_to_disk` writes beside the Arrow files: a Dataset's state, a DatasetDict's splits.
SAVED_MARKERS = ("state.json", "dataset_dict.json")


def is_saved_dataset(path: str | Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS)


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise HerdError(f"{what}; reading it needs `datasets` (pip install datasets)") from None
    return datasets


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _rows(stream, name: str) -> Iterator[tuple[str, dict]]:
    """(NAME:ROW, row) from 1, a failure while reading (a damaged file, a lost connection) as one
    line naming the row."""
    number = 0
    try:
        for number, row in enumerate(stream, start=1):
            yield f"{name}:{number}", dict(row)
    except Exception as e:
        raise HerdError(
            f"dataset '{name}': reading row {number + 1} failed ({_one_line(e)})"
        ) from None


def saved_rows(path: str | Path, split: str) -> Iterator[tuple[str, dict]]:
    """Rows of a `save_to_disk` folder: `split` of a DatasetDict; a Dataset is one split, read
    whatever `split` says unless it records another one."""
    datasets = _datasets(f"{path}: a folder saved by `datasets`")
    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as e:
        raise HerdError(f"{path}: not a readable saved dataset ({_one_line(e)})") from None
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise HerdError(f"{path}: no split '{split}' (data.split; it has {', '.join(saved)})")
        saved = saved[split]
    elif saved.split is not None and str(saved.split) != split:
        raise HerdError(f"{path}: holds the '{saved.split}' split, not '{split}' (data.split)")
    return _rows(saved, str(path))


def _hub_snapshot(name: str) -> Path | None:
    """The folder of the newest snapshot of dataset `name` in the Hub's file cache, if any."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached (or not a valid repository name)
        return None


def hub_rows(name: str, split: str) -> Iterator[tuple[str, dict]]:
    """Rows of split `split` of the Hugging Face dataset `name` ("org/name"), streamed."""
    datasets = _datasets(f"'{name}' is not a file or folder but a Hugging Face dataset name")
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        # `datasets` raises ConnectionError when it cannot reach the Hub (offline, or no network)
        # and has no prepared copy: then a snapshot in the Hub's file cache is read
        snapshot = _hub_snapshot(name) if isinstance(e, ConnectionError) else None
        if snapshot is None:
            raise HerdError(_not_loaded(name, e, datasets)) from None
        if not datasets.config.HF_HUB_OFFLINE:  # no network: the cached copy may be out of date
            print(
                f"warning: dataset '{name}': {_one_line(e)}; reading the copy cached in {snapshot}",
                file=sys.stderr,
            )
        try:
            stream = datasets.load_dataset(str(snapshot), split=split, streaming=True)
        except Exception as e:
            raise HerdError(
                f"dataset '{name}' (cached in {snapshot}): cannot be loaded ({_one_line(e)})"
            ) from None
    return _rows(stream, name)


def _not_loaded(name: str, error: Exception, datasets) -> str:
    if datasets.config.HF_HUB_OFFLINE and isinstance(error, ConnectionError):
        from huggingface_hub import constants

        return (
            f"dataset '{name}': not in the Hugging Face caches ({constants.HF_HUB_CACHE}, "
            f"{datasets.config.HF_DATASETS_CACHE}) and HF_HUB_OFFLINE is set; download it first "
            f"(hf download --repo-type dataset {name}) or give a local path"
        )
    return f"dataset '{name}': cannot be loaded ({_one_line(error)})"
