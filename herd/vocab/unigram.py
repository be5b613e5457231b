"""Sentencepiece unigram models as data: train, prune to a size, merge, tokenize, save.

Unigram vocabularies nest by score: the pieces of a unigram model ranked by log-probability, cut at
the top s (keeping every single character so nothing becomes unknown), form a usable model of size
s. herd uses this to read ALP-against-size curves off one training per cluster instead of training
a model per candidate size (herd/vocab/build.py).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from herd.errors import HerdError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def train_unigram(
    sentences: list[str],
    vocab_size: int,
    character_coverage: float = 0.9995,
    threads: int = 1,
    max_sentences: int = 2_000_000,
    grow_for_characters: bool = True,
) -> pb.ModelProto:
    """A unigram model (byte fallback on, BOS 1 / EOS 2 / UNK 0) trained on `sentences`.

    A corpus too small for `vocab_size` gets the largest vocabulary it supports (sentencepiece's
    `hard_vocab_limit=False`); callers compare the size reached with the size asked. A size below
    the number of characters to cover is raised to hold them (`grow_for_characters`).
    """
    if not sentences:
        raise HerdError("cannot train a vocabulary on no text")
    try:
        return _train(sentences, vocab_size, character_coverage, threads, max_sentences)
    except RuntimeError as e:
        # A script with more characters (at this coverage) than the requested size, such as Han:
        # the characters must all be pieces, so the model grows to hold them plus a margin.
        found = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if not found or not grow_for_characters:
            raise HerdError(
                f"sentencepiece could not train a {vocab_size}-piece model: {e}"
            ) from None
        needed = int(found.group(1)) + 256 + 3
        return train_unigram(
            sentences,
            max(needed, vocab_size) + vocab_size // 4,
            character_coverage,
            threads,
            max_sentences,
            grow_for_characters=False,
        )


def _train(sentences, vocab_size, character_coverage, threads, max_sentences) -> pb.ModelProto:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        hard_vocab_limit=False,
        num_threads=threads,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=1 << 14,
        train_extremely_large_corpus=False,
        minloglevel=2,
    )
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto


def learned_pieces(proto: pb.ModelProto) -> list[tuple[str, float]]:
    """(piece, log-probability) of the NORMAL pieces, best first."""
    pieces = [(p.piece, p.score) for p in proto.pieces if p.type == NORMAL]
    return sorted(pieces, key=lambda x: -x[1])


def with_pieces(template: pb.ModelProto, pieces: list[tuple[str, float]]) -> pb.ModelProto:
    """A copy of `template` (its specials, byte pieces, normalizer) whose learned pieces are
    exactly `pieces` (duplicates keep their best score)."""
    best: dict[str, float] = {}
    for piece, score in pieces:
        if piece not in best or score > best[piece]:
            best[piece] = score
    out = pb.ModelProto()
    out.CopyFrom(template)
    del out.pieces[:]
    for p in template.pieces:
        if p.type != NORMAL:
            out.pieces.append(p)
    for piece, score in sorted(best.items(), key=lambda x: -x[1]):
        out.pieces.append(pb.ModelProto.SentencePiece(piece=piece, score=score, type=NORMAL))
    out.trainer_spec.vocab_size = len(out.pieces)
    return out


def prune(proto: pb.ModelProto, size: int) -> pb.ModelProto:
    """The model cut to about `size` learned pieces: the best-scored ones plus every single
    character (which must stay to keep text representable without byte fallback)."""
    ranked = learned_pieces(proto)
    chars = [(p, s) for p, s in ranked if len(p) == 1]
    multi = [(p, s) for p, s in ranked if len(p) > 1]
    return with_pieces(proto, chars + multi[: max(0, size - len(chars))])


def processor(proto: pb.ModelProto) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def learned_size(proto: pb.ModelProto) -> int:
    return sum(1 for p in proto.pieces if p.type == NORMAL)


def save(proto: pb.ModelProto, path: Path) -> Path:
    from herd.atomic_files import write_file_atomically

    return write_file_atomically(path, lambda f: f.write(proto.SerializeToString()))
