"""XLM-V vocabulary build time: 64K pieces from 10 languages x 2 MB (generated text, six scripts)
on this machine, next to one joint sentencepiece training on the same data, in one process.

    .venv/bin/python bench/vocab.py                      # 10 x 2 MB, 64,000 pieces, 6 clusters
    .venv/bin/python bench/vocab.py --mb 0.5 --out /tmp/vocab.json

The target is a complete build (per-language models, clustering, per-cluster models, ALP curves,
allocation, union) within 5 minutes on 2 cores. The joint baseline trains one unigram model at
the same size on the alpha = 0.3 smoothed mix of the same languages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.multilingual_corpus

from herd.vocab.build import build, build_joint
from herd.vocab.corpus import load_corpus
from tests.multilingual_corpus import LANGUAGES, sentences

TEN = [lang for lang in LANGUAGES if lang not in ("krb_Latn", "rux_Cyrl")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mb", type=float, default=2.0, help="UTF-8 megabytes of text per language")
    p.add_argument("--size", type=int, default=64000, help="vocabulary size")
    p.add_argument("--clusters", type=int, default=6, help="k-means clusters")
    p.add_argument("--per-language-size", type=int, default=8000, help="per-language pieces")
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="herd-vocab-bench-") as tmp:
        folder = Path(tmp)
        target = int(args.mb * 1e6)
        for lang in TEN:
            chars = target
            while True:  # scripts differ in bytes per character: grow until the bytes are there
                text = "\n".join(sentences(lang, chars)) + "\n"
                if len(text.encode("utf-8")) >= target:
                    break
                chars = int(chars * 1.5)
            (folder / f"{lang}.txt").write_text(text, "utf-8")
        corpus = load_corpus(folder)
        start = time.perf_counter()
        result = build(corpus, args.size, args.clusters, args.per_language_size, progress=True)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        joint = build_joint(corpus, args.size)
        joint_s = time.perf_counter() - start
    out = {
        "languages": len(TEN),
        "mb_per_language": args.mb,
        "size": args.size,
        "clusters": args.clusters,
        "cpus": os.cpu_count(),
        "build_s": build_s,
        "joint_s": joint_s,
        "build_reached": result["reached"],
        "joint_reached": len(joint.pieces),
        "capacities": result["capacities"],
    }
    print(
        f"XLM-V build: {len(TEN)} languages x {args.mb} MB, {args.size:,} pieces requested, "
        f"{result['reached']:,} reached, {args.clusters} clusters, {os.cpu_count()} CPUs: "
        f"{build_s:.0f} s (target <= 300 s)"
    )
    print(
        f"one joint sentencepiece training, same data and size: {joint_s:.0f} s "
        f"({len(joint.pieces):,} pieces); build / joint = {build_s / joint_s:.1f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
