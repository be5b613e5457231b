"""The command line every study in experiments/ shares: a description from the first paragraph
of the study's docstring, each option's default in --help, --out for the folder everything is
written to, and --quick, which replaces the sizes with the study's QUICK ones (a smoke test,
what the tests in tests/e2e run)."""

from __future__ import annotations

import argparse


def study_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """A study's parser, with --out defaulting to `out`; the study adds its own options."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default=out, help="folder for everything written")
    return p


def parse_study(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    quick: dict,
    quick_help: str = "tiny sizes: a smoke test",
) -> argparse.Namespace:
    """`argv` parsed after adding --quick, which sets every option named in `quick`."""
    p.add_argument("--quick", action="store_true", help=quick_help)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    return args
