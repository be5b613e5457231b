"""`herd vocab build` (XLM-V or the joint baseline) and `herd vocab compare`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from herd import options
from herd.errors import HerdError


def add_vocab_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(
        dest="vocab_command", metavar="ACTION", required=True, parser_class=type(p)
    )
    b = sub.add_parser(
        "build",
        help="build a multilingual vocabulary (XLM-V, or --baseline joint)",
        description="Build a multilingual sentencepiece vocabulary: per-language "
        "unigram models, lexical vectors, k-means clusters, ALP-based capacity per "
        "cluster, union of per-cluster models (Liang et al. 2023).",
    )
    b.add_argument(
        "corpus",
        metavar="CORPUS",
        help="a folder of <language>.txt files (e.g. swh_Latn.txt, one sentence or "
        "paragraph per line) or a JSONL file with 'language' and 'text' fields",
    )
    b.add_argument(
        "--size",
        type=int,
        required=True,
        help="total vocabulary size, specials and 256 byte-fallback pieces included",
    )
    b.add_argument("--clusters", type=int, default=8, help="k-means clusters of languages")
    b.add_argument(
        "--kmeans-restarts",
        type=int,
        default=None,
        help="k-means++ runs (seeded); the partition with the lowest inertia is kept "
        "(default: 256)",
    )
    b.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    b.add_argument(
        "--per-language-size",
        type=int,
        default=8000,
        help="pieces of each per-language model (they only shape the clustering)",
    )
    b.add_argument(
        "--baseline",
        choices=["joint"],
        default=None,
        help="instead: one unigram model on the whole corpus with alpha=0.3 smoothed "
        "language sampling (XLM-R), for comparison at the same size",
    )
    b.add_argument(
        "--allow-smaller",
        action="store_true",
        help="when the corpus supports fewer pieces than --size, keep the smaller "
        "vocabulary with a warning instead of failing",
    )
    options.add_threads(b, "the sentencepiece trainings, run in parallel processes")
    b.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c = sub.add_parser(
        "compare",
        help="per-language ALP, tokens per sentence and fallback rate",
        description="Compare tokenizers on the held-out lines of CORPUS (the "
        "lines `herd vocab build` did not train on).",
    )
    c.add_argument("corpus", metavar="CORPUS", help="as for build")
    c.add_argument(
        "tokenizers",
        metavar="TOKENIZER",
        nargs="+",
        help="tokenizer files or folders (herd.load_tokenizer), e.g. the --out "
        "folders of two builds",
    )
    c.add_argument(
        "--out", type=Path, default=None, help="folder for comparison.json and comparison.png"
    )


def run_vocab(args: argparse.Namespace) -> None:
    if args.vocab_command == "build":
        _run_build(args)
    else:
        _run_compare(args)


def _run_build(args: argparse.Namespace) -> None:
    from herd.vocab import unigram
    from herd.vocab.build import KMEANS_RESTARTS, build, build_joint
    from herd.vocab.compare import plot_languages
    from herd.vocab.corpus import load_corpus

    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise HerdError(f"{out}: already exists (pass --overwrite to replace it)")
    if args.size < 300:
        raise HerdError(f"--size {args.size}: expected at least 300 (259 pieces are reserved)")
    if args.kmeans_restarts is not None and args.kmeans_restarts < 1:
        raise HerdError(f"--kmeans-restarts {args.kmeans_restarts}: expected at least 1")
    start = time.perf_counter()
    corpus = load_corpus(args.corpus)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report: dict = {
        "corpus": str(args.corpus),
        "size_requested": args.size,
        "languages": {
            c: {"train_sentences": len(x.train), "train_chars": x.chars} for c, x in corpus.items()
        },
    }
    if args.baseline == "joint":
        model = build_joint(corpus, args.size, threads=args.threads)
        report["method"] = "joint (alpha 0.3)"
    else:
        restarts = args.kmeans_restarts or KMEANS_RESTARTS
        result = build(
            corpus,
            args.size,
            args.clusters,
            args.per_language_size,
            args.threads,
            restarts=restarts,
        )
        model = result["model"]
        clusters = [
            {
                "languages": [
                    c
                    for c, label in zip(result["codes"], result["labels"], strict=True)
                    if label == k
                ],
                "capacity": result["capacities"][k],
                "alp_curve": {"sizes": result["curves"][k][0], "alp": result["curves"][k][1]},
            }
            for k in range(args.clusters)
        ]
        (tmp / "clusters.json").write_text(json.dumps(clusters, indent=1, ensure_ascii=False))
        plot_languages(result["vectors"], result["codes"], result["labels"], tmp / "languages.png")
        report.update(
            method="xlm-v",
            kmeans={"restarts": restarts, "inertia": result["inertia"]},
            clusters=clusters,
        )
    reached = len(model.pieces)
    report["size_reached"] = reached
    if reached < args.size:
        message = (
            f"{args.corpus}: supports {reached} pieces, fewer than --size {args.size} "
            f"(add text or lower --size)"
        )
        if not args.allow_smaller:
            shutil.rmtree(tmp, ignore_errors=True)
            raise HerdError(message + "; --allow-smaller keeps the smaller vocabulary")
        sys.stderr.write(f"warning: {message}\n")
    unigram.save(model, tmp / "tokenizer.model")
    report["seconds"] = time.perf_counter() - start
    (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # complete or absent
    print(
        f"wrote {out / 'tokenizer.model'}: {reached:,} pieces for {len(corpus)} languages "
        f"in {report['seconds']:.0f} s ({report['method']})"
    )
    if "kmeans" in report:
        print(
            f"  k-means++: inertia {report['kmeans']['inertia']:.4f}, "
            f"the lowest of {report['kmeans']['restarts']} restarts"
        )
    for k, cluster in enumerate(report.get("clusters", [])):
        print(
            f"  cluster {k}: capacity {cluster['capacity']:>7,}  {', '.join(cluster['languages'])}"
        )


def _run_compare(args: argparse.Namespace) -> None:
    from herd.tokenizer import load_tokenizer
    from herd.vocab.compare import compare, format_table, plot_comparison
    from herd.vocab.corpus import load_corpus

    corpus = load_corpus(args.corpus)
    tokenizers = {}
    for path in args.tokenizers:
        name = Path(path).name if Path(path).is_dir() else str(path)
        tokenizers[name if name not in tokenizers else str(path)] = load_tokenizer(path)
    table = compare(corpus, tokenizers)
    print(format_table(table))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.json").write_text(json.dumps(table, indent=1))
        plot_comparison(table, args.out / "comparison.png")
        print(f"wrote {args.out / 'comparison.json'} and {args.out / 'comparison.png'}")
