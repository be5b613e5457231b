"""Command-line options that several subcommands share, each defined once.

A flag means one thing everywhere (DESIGN.md, "Command line"): `--json` prints one JSON object on
stdout, `--out` names what is written, `--bos/--no-bos` decides the BOS token, `--threads` caps CPU
threads, and a token-id list is written the same way wherever one is read. Subcommands add these
through the functions here rather than spelling them out. Nothing here imports torch: building the
parser (`herd --help`) stays instant.
"""

from __future__ import annotations

import argparse

from herd.errors import HerdError


def token_ids(text: str) -> list[int]:
    """A token-id list as the command line writes one: integers separated by commas and/or spaces
    ("1,450,4996", "1 450 4996"). An argparse `type`: a bad list is a one-line usage error."""
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a token-id list (integers separated by commas or spaces, "
            "e.g. 1,450,4996)"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("empty token-id list: expected at least one id")
    return ids


def positive_int(text: str) -> int:
    """An integer of at least 1 (an argparse `type`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected at least 1")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (an argparse `type`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}: expected a probability in [0, 1]")
    return value


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON object on stdout")


def add_bos(p: argparse.ArgumentParser, default: bool, what: str = "the text") -> None:
    p.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"start {what} with the tokenizer's BOS token (default: {'on' if default else 'off'})",
    )


def add_threads(p: argparse.ArgumentParser, what: str = "the work") -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"CPU threads for {what} (default: every CPU this process may use)",
    )


def add_device(p: argparse.ArgumentParser) -> None:
    """--device and --dtype for commands that run a model."""
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype of the weights (default: bfloat16 on GPU, float32 on CPU)",
    )


def check_positive(value: int | None, flag: str) -> None:
    """A numeric option that must be at least 1 when given (for values checked after parsing)."""
    if value is not None and value < 1:
        raise HerdError(f"{flag} {value}: expected at least 1")
