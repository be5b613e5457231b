"""Byte-level BPE training with `tokenizers` (`herd tokenizer train`, `herd demo`).

The result splits text with the Llama 3 pattern, maps bytes to BPE symbols as GPT-2 does (so every
string round-trips exactly, with no unknown token), and carries the Llama 3 special tokens, so
`herd.load_tokenizer` reads it with the Llama 3 chat format. Corpus files are read as strict UTF-8:
a file with invalid bytes is named, with the byte offset, rather than silently repaired. The corpus
is read through `herd.data.sources`, so it may be anything `herd data prepare` reads (text files and
folders, JSONL, Parquet, `stdlib`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from herd.atomic_files import write_folder_atomically
from herd.data.sources import iter_documents
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
    texts: list[str] = []
    total = 0
    # disable=None: a bar on a terminal only, so logs and captured errors stay clean
    documents = iter_documents([str(src) for src in sources])
    for doc in tqdm(
        documents, desc="reading corpus", unit="doc", disable=None if show_progress else True
    ):
        texts.append(doc.text)
        total += len(doc.text)
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
