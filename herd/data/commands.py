"""`herd data prepare`: tokenize documents into memory-mapped shards with a manifest."""

from __future__ import annotations

import argparse
import json

from herd import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    prep = sub.add_parser("prepare", help="tokenize sources into token shards")
    prep.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="text files or folders, .jsonl (field --field), .parquet (column --field), a Hugging "
        "Face dataset name (org/name, streamed; needs `datasets` and a network), or 'stdlib': the "
        "running interpreter's standard-library source (no download)",
    )
    prep.add_argument("--tokenizer", required=True, help="tokenizer file or folder carrying one")
    prep.add_argument("--out", required=True, help="folder for shards and manifest.json")
    prep.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        help="share of documents held out for validation, chosen by a hash of each document's id "
        "(0.01)",
    )
    prep.add_argument(
        "--shard-chars",
        type=int,
        default=50_000_000,
        help="characters of text per shard before tokenizing (50,000,000)",
    )
    prep.add_argument("--field", default="text", help="JSONL/Parquet/dataset text field (text)")
    prep.add_argument(
        "--on-bad-file",
        choices=["fail", "skip"],
        default="fail",
        help="a file that is not UTF-8: stop with an error naming it (fail), or skip it with a "
        "warning (skip)",
    )
    options.add_threads(prep, "tokenizing")
    options.add_json(prep, "the manifest's totals")


def run(args: argparse.Namespace) -> None:
    from herd.data.shards import prepare

    path = prepare(
        args.sources,
        args.tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        shard_chars=args.shard_chars,
        field=args.field,
        on_bad_file=args.on_bad_file,
        num_threads=args.threads,
    )
    manifest = json.loads(path.read_text())
    totals = manifest["totals"]
    if args.json:
        print(json.dumps(totals))
        return
    for split, t in totals.items():
        print(
            f"{split:<6}{t['documents']:>10,} documents {t['tokens']:>14,} tokens "
            f"{t['bytes']:>14,} bytes"
        )
    print(f"wrote {path}")
