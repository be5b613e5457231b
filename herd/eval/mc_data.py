"""Multiple-choice datasets on disk: Belebele rows and herd's generic schema, validated row by row.

Belebele (Bandarkar et al. 2023) rows carry `link`, `question_number`, `flores_passage`,
`question`, `mc_answer1`..`mc_answer4`, `correct_answer_num` ("1".."4") and `dialect` (e.g.
`eng_Latn`); the published files are one JSONL per language (`eng_Latn.jsonl`), and the Hugging
Face dataset `facebook/belebele` has one split per language.

The generic schema (`--task mc`), one JSON object per line:
    {"id": "q1", "context": "Question: 2 + 2 =\\nAnswer:", "choices": ["3", "4"], "answer": 1,
     "language": "eng_Latn"}
`answer` is the 0-based index of the correct choice; `id` and `language` are optional. Each choice
is scored as the continuation " " + choice after the context.

A bad row (missing field, answer out of range) is reported as FILE:LINE and skipped, or is fatal
with `strict`; a file that cannot be read at all is always fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from herd.errors import HerdError

BELEBELE_FIELDS = (
    "link",
    "question_number",
    "flores_passage",
    "question",
    "mc_answer1",
    "mc_answer2",
    "mc_answer3",
    "mc_answer4",
    "correct_answer_num",
)
HF_BELEBELE = "facebook/belebele"


@dataclass
class Item:
    """One question: `fields` holds the raw row; `answer` is the 0-based correct choice."""

    language: str
    uid: str
    answer: int
    fields: dict
    source: str  # FILE:LINE, for reports


@dataclass
class Dataset:
    items: list[Item] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # skipped rows, as "FILE:LINE: why"

    def languages(self) -> list[str]:
        return sorted({i.language for i in self.items})


def _rows(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed row) of a JSONL or Parquet file; Parquet rows count from 1."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise HerdError(f"{path}: not a readable Parquet file ({e})") from None
        return list(enumerate(table.to_pylist(), start=1))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HerdError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            rows.append((number, f"not valid JSON ({e.msg})"))
    return rows


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted([*path.glob("*.jsonl"), *path.glob("*.parquet")])
        if not found:
            raise HerdError(f"{path}: no .jsonl or .parquet files in this folder")
        return found
    raise HerdError(f"{path}: no such file or folder")


def _belebele_item(row: dict, where: str, language: str) -> Item:
    missing = [f for f in BELEBELE_FIELDS if f not in row or row[f] is None]
    if missing:
        raise ValueError(f"missing field '{missing[0]}'")
    try:
        answer = int(str(row["correct_answer_num"]).strip())
    except ValueError:
        answer = 0
    if not 1 <= answer <= 4:
        raise ValueError(f"correct_answer_num is {row['correct_answer_num']!r}, expected 1-4")
    lang = str(row.get("dialect") or language)
    uid = f"{lang}/{row['link']}#{row['question_number']}"
    return Item(lang, uid, answer - 1, row, where)


def _generic_item(row: dict, where: str, language: str, index: int) -> Item:
    for name in ("context", "choices", "answer"):
        if name not in row:
            raise ValueError(f"missing field '{name}'")
    choices = row["choices"]
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)
    ):
        raise ValueError("'choices' must be a list of at least two strings")
    answer = row["answer"]
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise ValueError(f"answer is {answer!r}, expected an index 0-{len(choices) - 1}")
    if not isinstance(row["context"], str):
        raise ValueError("'context' must be a string")
    lang = str(row.get("language") or language)
    return Item(lang, str(row.get("id", index)), answer, row, where)


def load_items(
    path: str | Path,
    schema: str = "belebele",
    languages: list[str] | None = None,
    strict: bool = False,
    limit: int | None = None,
) -> Dataset:
    """Items from a file, a folder of per-language files, or `facebook/belebele` (online).

    The language of a row is its `dialect` (Belebele) or `language` (generic) field, else the
    file's stem. `limit` keeps the first N items of each language.
    """
    if str(path) == HF_BELEBELE and not Path(path).exists():
        return _load_hf(languages, limit)
    data = Dataset()
    for file in _files(Path(path)):
        for number, row in _rows(file):
            where = f"{file}:{number}"
            try:
                if not isinstance(row, dict):
                    raise ValueError(row if isinstance(row, str) else "expected a JSON object")
                if schema == "belebele":
                    item = _belebele_item(row, where, file.stem)
                else:
                    item = _generic_item(row, where, file.stem, len(data.items))
            except ValueError as e:
                if strict:
                    raise HerdError(f"{where}: {e}") from None
                data.problems.append(f"{where}: {e}")
                continue
            data.items.append(item)
    return _select(data, languages, limit, str(path))


def _select(data: Dataset, languages: list[str] | None, limit: int | None, source: str):
    if languages:
        known = set(data.languages())
        unknown = [lang for lang in languages if lang not in known]
        if unknown:
            shown = ", ".join(sorted(known)[:12]) + (" ..." if len(known) > 12 else "")
            raise HerdError(f"{source}: no items for language '{unknown[0]}' (found: {shown})")
        data.items = [i for i in data.items if i.language in set(languages)]
    if limit is not None:
        counts: dict[str, int] = {}
        kept = []
        for item in data.items:
            counts[item.language] = counts.get(item.language, 0) + 1
            if counts[item.language] <= limit:
                kept.append(item)
        data.items = kept
    if not data.items:
        raise HerdError(f"{source}: no valid items ({len(data.problems)} rows skipped)")
    return data


def _load_hf(languages: list[str] | None, limit: int | None) -> Dataset:
    """Belebele from the Hugging Face Hub (needs the `datasets` package and a network)."""
    try:
        import datasets
    except ImportError:
        raise HerdError(
            f"--data {HF_BELEBELE}: needs the `datasets` package (pip install datasets), or "
            "pass a folder of per-language JSONL files"
        ) from None
    data = Dataset()
    names = languages or datasets.get_dataset_split_names(HF_BELEBELE)
    for lang in names:
        for number, row in enumerate(datasets.load_dataset(HF_BELEBELE, split=lang), start=1):
            data.items.append(_belebele_item(dict(row), f"{HF_BELEBELE}/{lang}:{number}", lang))
    return _select(data, None, limit, HF_BELEBELE)
