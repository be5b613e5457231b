"""Perplexity and bits per byte of a model on text files or on prepared token shards.

Every token of every document is predicted exactly once, with as much preceding context of its
own document as fits the model (lm-eval's rolling windows, herd.eval.scoring.rolling_windows);
the first token is predicted from BOS. Bits per byte divide the summed negative log-likelihood (in
bits) by the UTF-8 bytes of the text, which makes models with different tokenizers comparable;
perplexity is per token, so it is not.

Text input: files, folders, JSONL or Parquet, read by the same code as `herd data prepare`. Shards:
a folder written by `herd data prepare` (its `val` split by default); documents there are stored
as BOS + text + EOS, and the EOS is predicted too (0 bytes, as in training's validation).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from tqdm import tqdm

from herd.errors import HerdError
from herd.eval.scoring import rolling_nll


def _document_ids(model, tokenizer, data: str, split: str, limit: int | None):
    """(prefix id, predicted ids, bytes of the predicted text) per document."""
    folder = Path(data)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else 0
    if (folder / "manifest.json").is_file():
        from herd.data.shards import TokenShards

        shards = TokenShards(folder)
        token_bytes = shards.tokenizer().token_bytes
        if shards.manifest["tokenizer"]["vocab_size"] != model.config.vocab_size:
            raise HerdError(
                f"{folder}: tokenized with a {shards.manifest['tokenizer']['vocab_size']}-token "
                f"vocabulary, the model has {model.config.vocab_size}"
            )
        count = 0
        for tokens, offsets in shards.shards(split):
            for start, end in itertools.pairwise(offsets.tolist()):
                ids = [int(t) for t in tokens[start:end]]
                if len(ids) < 2:
                    continue
                yield ids[0], ids[1:], int(token_bytes[ids[1:]].sum())
                count += 1
                if limit is not None and count >= limit:
                    return
        return
    from herd.data.sources import iter_documents

    for count, doc in enumerate(iter_documents([data])):
        if limit is not None and count >= limit:
            return
        if doc.text:
            yield bos, tokenizer.encode(doc.text), len(doc.text.encode("utf-8"))


@torch.no_grad()
def perplexity(
    model, tokenizer, data: str, split: str = "val", limit: int | None = None, progress=True
) -> dict:
    """{'loss', 'perplexity', 'bits_per_byte', 'tokens', 'bytes', 'documents'} over `data`."""
    nats, tokens, nbytes, docs = 0.0, 0, 0, 0
    bar = tqdm(desc="perplexity", unit="doc", disable=None if progress else True)
    for prefix, ids, size in _document_ids(model, tokenizer, data, split, limit):
        nats += rolling_nll(model, ids, prefix)
        tokens += len(ids)
        nbytes += size
        docs += 1
        bar.update(1)
    bar.close()
    if tokens == 0:
        raise HerdError(f"{data}: no text to evaluate")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": nats / math.log(2) / max(nbytes, 1),
        "tokens": tokens,
        "bytes": nbytes,
        "documents": docs,
    }
