"""`herd agent memory` and `herd index`: the agent's long-term memory and its search index from the
command line.

    herd agent memory list   [--memory agent.db] [--user U] [--json]
    herd agent memory delete [--memory agent.db] ID [ID ...]
    herd agent memory export [--memory agent.db] --out F.jsonl [--user U] [--format jsonl|json]
    herd index build DOCS [DOCS ...] --out DIR [--chunk-words N]
    herd index search DIR|stdlib|URL QUERY [-k K] [--json]

The memory file is the agent's SQLite database (herd/agent/memory.py); these commands read and
edit an existing one and never create it. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd import options
from herd.errors import HerdError

DEFAULT_MEMORY = "agent.db"


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="agent_action", metavar="ACTION", required=True)
    memory = sub.add_parser(
        "memory",
        help="list, delete or export the notes of an agent's long-term memory",
        description="Read and edit an agent's long-term memory (a SQLite file).",
    )
    actions = memory.add_subparsers(dest="memory_action", metavar="ACTION", required=True)
    show = actions.add_parser("list", help="the notes, one per line (every user by default)")
    delete = actions.add_parser("delete", help="delete notes by id")
    delete.add_argument("ids", metavar="ID", type=int, nargs="+", help="note ids (from `list`)")
    export = actions.add_parser("export", help="write the notes to a JSONL or JSON file")
    export.add_argument("--out", required=True, help="file to write (whole or not at all)")
    export.add_argument("--format", choices=["jsonl", "json"], default="jsonl", help="file format")
    for q in (show, delete, export):
        q.add_argument(
            "--memory",
            default=DEFAULT_MEMORY,
            metavar="agent.db",
            help=f"the agent's memory database (default {DEFAULT_MEMORY})",
        )
    for q in (show, export):
        q.add_argument("--user", help="only this user's notes (default: every user)")
    options.add_json(show, "the notes")


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="index_action", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build",
        help="a BM25 index over text, JSONL or Parquet documents",
        description="Build a local BM25 search index (bm25s) over documents: .txt files (split "
        "into passages), .jsonl and .parquet rows with a text field, or folders of them.",
    )
    build.add_argument("sources", metavar="DOCS", nargs="+", help="files or folders")
    build.add_argument("--out", required=True, help="the index folder (complete or absent)")
    build.add_argument(
        "--text-field", default="text", help="JSONL/Parquet field holding the text (default text)"
    )
    build.add_argument(
        "--title-field", default="title", help="JSONL/Parquet field holding a title (default title)"
    )
    build.add_argument(
        "--chunk-words",
        type=options.positive_int,
        default=200,
        help="passage length in words for long documents (default 200)",
    )
    build.add_argument(
        "--overwrite", action="store_true", help="replace an existing index folder at --out"
    )
    find = sub.add_parser(
        "search",
        help="query an index: a folder, 'stdlib' (Python's documentation) or an HTTP endpoint",
        description="Print the passages an index returns for a query.",
    )
    find.add_argument("index", metavar="INDEX", help="index folder, 'stdlib' or http(s)://URL")
    find.add_argument("query", help="the query text")
    find.add_argument("-k", type=options.positive_int, default=5, help="passages (default 5)")
    options.add_json(find, "the passages")


def _store(path: str):
    from herd.agent.memory import MemoryStore

    if not Path(path).is_file():
        raise HerdError(f"{path}: no such memory database (an agent creates it on first use)")
    return MemoryStore(path)


def run_agent(args: argparse.Namespace) -> None:
    with _store(args.memory) as store:
        if args.memory_action == "list":
            entries = store.list_entries(args.user)
            if args.json:
                print(json.dumps({"notes": [e.to_dict() for e in entries]}))
                return
            for e in entries:
                print(f"{e.id}\t{e.user}\t{e.speaker}\tused {e.uses}x\t{e.text}")
            print(f"{len(entries)} notes in {args.memory}", file=sys.stderr)
        elif args.memory_action == "delete":
            gone = store.delete_entries(args.ids)
            missing = sorted(set(args.ids) - set(gone))
            print(f"deleted {len(gone)} notes")
            if missing:  # the others are deleted; say which ids were not there
                raise HerdError(f"{args.memory}: no note with id {', '.join(map(str, missing))}")
        else:
            n = store.export_entries(args.out, format=args.format, user=args.user)
            print(f"wrote {n} notes to {args.out}")


def run_index(args: argparse.Namespace) -> None:
    from herd.agent import search

    if args.index_action == "build":
        out = search.build_index(
            args.sources,
            Path(args.out),
            text_field=args.text_field,
            title_field=args.title_field,
            chunk_words=args.chunk_words,
            overwrite=args.overwrite,
        )
        print(f"wrote the index to {out}")
        return
    backend = search.open_backend(args.index)
    hits = backend.search(args.query, args.k)
    if args.json:
        print(json.dumps({"results": hits}))
        return
    for i, hit in enumerate(hits, 1):
        title = hit.get("title") or hit.get("source") or ""
        text = " ".join(hit["text"].split())
        print(f"{i}. [{hit.get('score', 0):.2f}] {title}\n   {text[:300]}")
