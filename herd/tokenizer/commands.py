"""`herd tokenizer encode|decode|train|info`: the tokenizer stage from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd import options
from herd.errors import HerdError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    tok_help = "tokenizer file (tokenizer.json, tokenizer.model) or a folder carrying one"

    enc = sub.add_parser("encode", help="text or a dialog to token ids")
    enc.add_argument("tokenizer", metavar="TOKENIZER", help=tok_help)
    enc.add_argument("text", nargs="?", metavar="TEXT", help="text to encode ('-' reads stdin)")
    enc.add_argument("--file", help="encode the contents of this UTF-8 file")
    enc.add_argument(
        "--dialog",
        metavar="DIALOG.json",
        help="encode a chat: a JSON list of {role, content} messages, in the tokenizer's chat "
        "format; prints ids and the assistant-token loss mask",
    )
    options.add_bos(enc, default=False)
    enc.add_argument("--eos", action="store_true", help="append the EOS token")
    enc.add_argument(
        "--allow-special",
        action="store_true",
        help="turn special-token text (e.g. <|eot_id|>) into special tokens; by default it is "
        "encoded as ordinary text",
    )
    enc.add_argument(
        "--no-generation-prompt",
        action="store_true",
        help="with --dialog: do not end with the assistant header the model continues from",
    )
    options.add_json(enc, "the ids (and with --dialog the loss mask)")

    dec = sub.add_parser("decode", help="token ids to text")
    dec.add_argument("tokenizer", metavar="TOKENIZER", help=tok_help)
    dec.add_argument(
        "ids",
        type=options.token_ids,
        metavar="IDS",
        help="token ids separated by commas or spaces (e.g. 1,450,4996; quote a list with spaces)",
    )
    dec.add_argument("--skip-special", action="store_true", help="leave special tokens out")

    train = sub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus")
    train.add_argument(
        "corpus", nargs="+", metavar="CORPUS", help="UTF-8 text/JSONL files or folders of them"
    )
    train.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size")
    train.add_argument("--out", required=True, help="folder to write tokenizer.json into")
    train.add_argument(
        "--min-frequency", type=int, default=2, help="minimum pair count for a merge (2)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    info = sub.add_parser("info", help="kind, vocabulary size, special ids and chat format")
    info.add_argument("tokenizer", metavar="TOKENIZER", help=tok_help)
    options.add_json(info, "the description")


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise HerdError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise HerdError(f"{path}: invalid UTF-8 at byte {e.start}") from None


def _encode(args: argparse.Namespace) -> None:
    from herd.tokenizer import load_tokenizer

    sources = [x is not None for x in (args.text, args.file, args.dialog)]
    if sum(sources) != 1:
        raise HerdError("give exactly one of TEXT, --file or --dialog")
    tok = load_tokenizer(args.tokenizer)
    if args.dialog:
        try:
            messages = json.loads(_read(args.dialog))
        except json.JSONDecodeError as e:
            raise HerdError(f"{args.dialog}: not valid JSON ({e})") from None
        ids, mask = tok.encode_dialog(messages, not args.no_generation_prompt)
        if args.json:
            print(json.dumps({"ids": ids, "mask": mask}))
        else:
            print(" ".join(map(str, ids)))
            print(" ".join(map(str, mask)))
        return
    text = sys.stdin.read() if args.text == "-" else args.text
    if args.file:
        text = _read(args.file)
    ids = tok.encode(text, bos=args.bos, eos=args.eos, allow_special=args.allow_special)
    print(json.dumps({"ids": ids}) if args.json else " ".join(map(str, ids)))


def run(args: argparse.Namespace) -> None:
    if args.action == "encode":
        _encode(args)
    elif args.action == "decode":
        from herd.tokenizer import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        ids = args.ids
        bad = [i for i in ids if not 0 <= i < tok.vocab_size]
        if bad:
            raise HerdError(f"token id {bad[0]} is outside the vocabulary [0, {tok.vocab_size})")
        print(tok.decode(ids, skip_special=args.skip_special))
    elif args.action == "train":
        from herd.tokenizer import load_tokenizer
        from herd.vocab.bpe import train_bpe

        out = train_bpe(args.corpus, args.vocab_size, args.out, args.min_frequency, args.overwrite)
        size = load_tokenizer(out).vocab_size
        note = "" if size >= args.vocab_size else f" (the corpus supports no more than {size})"
        print(f"wrote {out / 'tokenizer.json'}: {size} tokens{note}")
    else:
        from herd.tokenizer import load_tokenizer

        d = load_tokenizer(args.tokenizer).describe()
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            print("\n".join(f"{k:<16}{v}" for k, v in d.items()))
