"""`herd tokenizer train`: a byte-level BPE tokenizer trained on a corpus with `tokenizers`.

The result splits text with the Llama 3 pattern, maps bytes to BPE symbols as GPT-2 does (so every
string round-trips exactly, with no unknown token), and carries the Llama 3 special tokens, so
`herd.load_tokenizer` reads it with the Llama 3 chat format. Corpus files are read as strict UTF-8:
a file with invalid bytes is named, with the byte offset, rather than silently repaired.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from herd.checkpoint.io import write_folder_atomically
from herd.errors import HerdError
from herd.tokenizer.llama3 import PATTERN

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
    # sentinels for the masked (infilling) objectives of Artetxe et al. 2022 / CM3
    "<|mask_0|>",
    "<|mask_1|>",
    "<|mask_2|>",
    "<|mask_3|>",
]
TEXT_SUFFIXES = {".txt", ".text", ".md", ".jsonl", ".py", ".json", ""}


def corpus_files(sources: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            found = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise HerdError(f"{src}: folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files += found
        elif src.is_file():
            files.append(src)
        else:
            raise HerdError(f"{src}: no such corpus file or folder")
    return files


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HerdError(f"{path}: invalid UTF-8 at byte {e.start} (expected UTF-8 text)") from None


def _documents(path: Path) -> Iterator[str]:
    text = _read_text(path)
    if path.suffix != ".jsonl":
        yield from text.splitlines(keepends=True)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise HerdError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise HerdError(f"{path}: line {number} has no string field 'text'")
        yield record["text"]


def new_bpe_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(
    sources: list[str | Path],
    vocab_size: int,
    out: str | Path,
    min_frequency: int = 2,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train on every file of `sources` and write tokenizer.json + tokenizer_config.json to `out`."""
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise HerdError(f"--vocab-size {vocab_size}: must be at least {minimum} (bytes + specials)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise HerdError(f"{out}: already exists (pass --overwrite to replace it)")
    files = corpus_files(sources)
    texts: list[str] = []
    total = 0
    # disable=None: a bar on a terminal only, so logs and captured errors stay clean
    bar = tqdm(files, desc="reading corpus", unit="file", disable=None if show_progress else True)
    for path in bar:
        for doc in _documents(path):
            texts.append(doc)
            total += len(doc)
    if not any(t.strip() for t in texts):
        raise HerdError(f"corpus {', '.join(map(str, sources))}: empty (no text to train on)")
    tok = new_bpe_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_format": "llama3",
        "trained_by": "herd tokenizer train",
        "corpus_characters": total,
    }

    def fill(tmp: Path) -> None:
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    return write_folder_atomically(out, fill, overwrite)
