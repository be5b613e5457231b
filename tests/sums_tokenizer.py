"""The tiny chat tokenizer the post-training tests share: a byte-level BPE (herd's trainer, the
Llama 3 special tokens and chat format) on sentences about sums, "What is 3 plus 4? 7."."""

from __future__ import annotations

from pathlib import Path


def sums_tokenizer(root: Path, vocab_size: int = 400, repeats: int = 3):
    """The tokenizer trained into ROOT/tok on every sum of two digits (`repeats` times over)."""
    import herd
    from herd.vocab.bpe import train_bpe

    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(f"What is {a} plus {b}? {a + b}." for a in range(10) for b in range(10)) * repeats
    )
    return herd.load_tokenizer(train_bpe([corpus], vocab_size, root / "tok", show_progress=False))
