"""Compare tokenizers on the held-out lines of a multilingual corpus, and draw the vocabulary
plots: per-language ALP / tokens per sentence / unknown-or-byte-fallback rate (table + PNG), and
the languages' lexical vectors in 2D coloured by cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from herd.vocab.corpus import Language, alp


def _pieces_and_fallback(tokenizer, sentences: list[str]) -> tuple[list[list], float]:
    """Token sequences (ids) and the share of tokens that are unknown or byte-fallback pieces."""
    sp = getattr(tokenizer, "_sp", None)  # sentencepiece models can tell unknown/byte pieces
    ids = tokenizer.encode_batch(sentences)
    total = sum(len(x) for x in ids)
    if sp is None or total == 0:
        return ids, 0.0
    bad = sum(1 for seq in ids for i in seq if sp.is_unknown(i) or sp.is_byte(i))
    return ids, bad / total


def compare(corpus: dict[str, Language], tokenizers: dict[str, object]) -> dict:
    """{tokenizer name: {language: {alp, tokens_per_sentence, fallback_rate, sentences}}}."""
    table: dict[str, dict] = {}
    for name, tok in tokenizers.items():
        rows = {}
        for code, lang in corpus.items():
            text = lang.held_out or lang.train[: max(1, len(lang.train) // 10)]
            ids, fallback = _pieces_and_fallback(tok, text)
            rows[code] = {
                "alp": alp(ids),
                "tokens_per_sentence": float(np.mean([len(x) for x in ids])),
                "fallback_rate": fallback,
                "sentences": len(text),
                "held_out": bool(lang.held_out),
            }
        table[name] = rows
    return table


def format_table(table: dict) -> str:
    names = list(table)
    languages = list(next(iter(table.values())))
    head = f"{'language':<12}" + "".join(f"{n[:22]:>24}" for n in names)
    lines = [
        "ALP (higher is better) / tokens per sentence / unknown+byte-fallback %",
        head,
    ]
    for lang in languages:
        cells = []
        for n in names:
            r = table[n][lang]
            cells.append(
                f"{r['alp']:>9.1f} {r['tokens_per_sentence']:>6.1f} "
                f"{100 * r['fallback_rate']:>5.1f}%"
            )
        lines.append(f"{lang:<12}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def plot_comparison(table: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    languages = list(next(iter(table.values())))
    x = np.arange(len(languages))
    width = 0.8 / len(names)
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 0.6 * len(languages) + 2), 7), sharex=True)
    for k, name in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * width
        axes[0].bar(x + offset, [table[name][lang]["alp"] for lang in languages], width, label=name)
        axes[1].bar(
            x + offset,
            [table[name][lang]["tokens_per_sentence"] for lang in languages],
            width,
            label=name,
        )
    axes[0].set_ylabel("ALP (higher is better)")
    axes[1].set_ylabel("tokens per sentence")
    axes[1].set_xticks(x, languages, rotation=60, ha="right")
    axes[0].legend(fontsize=8)
    axes[0].set_title("held-out text, per language")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_languages(vectors: np.ndarray, codes: list[str], labels: list[int], path: Path) -> Path:
    """The lexical vectors projected on their first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    xy = u[:, :2] * s[:2] if u.shape[1] >= 2 else np.c_[u[:, 0] * s[0], np.zeros(len(codes))]
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    seen: dict[int, int] = {}
    for (px, py), code, label in zip(xy, codes, labels, strict=True):
        ax.scatter(px, py, color=cmap(label % 10), s=40)
        k = seen[label] = seen.get(label, -1) + 1  # stack the names of close languages
        ax.annotate(
            code,
            (px, py),
            fontsize=8,
            xytext=(5, 4 - 10 * k),
            textcoords="offset points",
            color=cmap(label % 10),
        )
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("languages' lexical vectors, coloured by k-means cluster")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
