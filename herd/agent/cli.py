"""`herd agent` and `herd index`: the agent, its long-term memory, feedback and Director head, and
its search index from the command line.

    herd agent CKPT [--index DIR|stdlib|URL|none] [--memory agent.db] [--guard G] [--trace] ...
    herd agent feedback export [--memory agent.db] [--sft F] [--dpo F] [--model CKPT] [--user U]
    herd agent director CKPT [--memory agent.db] --out DIR [--steps N] [--gamma G]
    herd agent memory list   [--memory agent.db] [--user U] [--json]
    herd agent memory delete [--memory agent.db] ID [ID ...]
    herd agent memory export [--memory agent.db] --out F.jsonl [--user U] [--format jsonl|json]
    herd index build DOCS [DOCS ...] --out DIR [--chunk-words N]
    herd index search DIR|stdlib|URL QUERY [-k K] [--json]

The memory file is the agent's SQLite database (herd/agent/memory.py); the commands other than
the agent itself read and edit an existing one and never create it. Only the agent, feedback
export with --model and Director training import torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd import options
from herd.errors import HerdError

DEFAULT_MEMORY = "agent.db"
AGENT_ACTIONS = ("chat", "memory", "feedback", "director")


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    from herd.agent.repl import __doc__ as repl_doc
    from herd.agent.repl import add_repl_arguments

    sub = p.add_subparsers(dest="agent_action", metavar="ACTION", required=True)
    chat = sub.add_parser(
        "chat",
        help="the agent in a terminal (`herd agent CKPT` is `herd agent chat CKPT`)",
        description=repl_doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repl_arguments(chat)
    feedback = sub.add_parser(
        "feedback",
        help="turn rated replies into SFT and DPO data",
        description="Export the ratings stored with the agent's turns: good replies as SFT rows "
        "(herd sft), bad ones as DPO pairs (herd dpo) against the user's correction or, with "
        "--model, a regenerated reply.",
    )
    fb = feedback.add_subparsers(dest="feedback_action", metavar="ACTION", required=True)
    export = fb.add_parser("export", help="write SFT and DPO JSONL files from the ratings")
    export.add_argument("--sft", metavar="F.jsonl", help="SFT rows of the good replies")
    export.add_argument("--dpo", metavar="F.jsonl", help="DPO pairs of the bad replies")
    export.add_argument("--user", help="only this user's turns (default: every user)")
    export.add_argument(
        "--context",
        choices=["module", "dialogue"],
        default="module",
        help="the prompt of each row: the response module's messages as the model saw them "
        "(knowledge and tool results included; the default) or the plain dialogue",
    )
    export.add_argument(
        "--model",
        metavar="CKPT",
        help="regenerate a chosen reply (sampled, different from the bad one) for bad replies "
        "without a correction; without it they are left out",
    )
    director = sub.add_parser(
        "director",
        help="train a Director classifier head from the thumbs up and down",
        description="Director (Arora et al. 2022): a classifier head beside the LM head, trained "
        "on the rated replies with the LM frozen; `herd agent CKPT --director DIR` decodes with "
        "log p(token) + gamma * log sigmoid(classifier).",
    )
    director.add_argument("checkpoint", metavar="CKPT", help="the agent's chat model")
    director.add_argument("--out", required=True, help="folder for the head (whole or absent)")
    director.add_argument("--steps", type=options.positive_int, default=200, help="steps (200)")
    director.add_argument("--lr", type=float, default=1e-3, help="learning rate (1e-3)")
    director.add_argument("--batch-size", type=options.positive_int, default=8, help="rows (8)")
    director.add_argument(
        "--gamma", type=float, default=1.0, help="the decoding weight stored with the head (1.0)"
    )
    director.add_argument("--user", help="only this user's ratings (default: every user)")
    director.add_argument(
        "--context", choices=["module", "dialogue"], default="module", help="as in feedback export"
    )
    options.add_device(director)
    for q in (export, director):
        q.add_argument(
            "--memory",
            default=DEFAULT_MEMORY,
            metavar="agent.db",
            help=f"the agent's database (default {DEFAULT_MEMORY})",
        )
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
    if args.agent_action == "chat":
        from herd.agent.repl import run_repl

        run_repl(args)
    elif args.agent_action == "feedback":
        _export_feedback(args)
    elif args.agent_action == "director":
        _train_director(args)
    else:
        _memory(args)


def _export_feedback(args: argparse.Namespace) -> None:
    from herd.agent.feedback import export_feedback
    from herd.agent.traces import TurnLog

    if args.sft is None and args.dpo is None:
        raise HerdError("feedback export: give --sft F.jsonl and/or --dpo F.jsonl")
    chat = None
    with _store(args.memory) as store:
        if args.model is not None:
            from herd.agent.llm import LocalChat, check_chat_tokenizer
            from herd.checkpoint.loading import load_for_command

            model, tok, _ = load_for_command(args.model, None, None, "to regenerate replies")
            check_chat_tokenizer(tok)
            chat = LocalChat(model, tok)
        counts = export_feedback(
            TurnLog(store), sft=args.sft, dpo=args.dpo, user=args.user, context=args.context,
            chat=chat,
        )  # fmt: skip
    for path, key in ((args.sft, "sft_rows"), (args.dpo, "dpo_rows")):
        if path is not None:
            print(f"wrote {counts[key]} rows to {path}")
    left = {k: counts[k] for k in ("flagged", "no_chosen") if counts[k]}
    if left:
        print(f"left out: {left}", file=sys.stderr)


def _train_director(args: argparse.Namespace) -> None:
    from herd.agent.director import DirectorRow, save_director, train_director
    from herd.agent.feedback import turn_prompt
    from herd.agent.traces import TurnLog
    from herd.checkpoint.loading import load_for_command

    with _store(args.memory) as store:
        records = TurnLog(store).turns(user=args.user, rated=True)
    rows = [DirectorRow(turn_prompt(r, args.context), r.reply, int(r.rating == 1))
            for r in records if not r.flagged and r.reply.strip()]  # fmt: skip
    labels = {row.label for row in rows}
    if labels != {0, 1}:
        raise HerdError(
            f"{args.memory}: {len(rows)} rated replies; Director needs both good and bad ones"
        )
    model, tok, _ = load_for_command(args.checkpoint, args.device, args.dtype, "to read replies")
    head, stats = train_director(
        model, tok, rows, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        show_progress=True,
    )  # fmt: skip
    out = save_director(
        head, Path(args.out), base_checkpoint=str(args.checkpoint), gamma=args.gamma
    )
    print(f"wrote the Director head to {out} ({len(rows)} rated replies; {json.dumps(stats)})")


def _memory(args: argparse.Namespace) -> None:
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
