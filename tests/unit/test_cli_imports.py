"""`herd --help` stays fast: building the parser of every subcommand imports no torch (nor
transformers), so each subcommand's options module must keep its heavy imports inside functions."""

from __future__ import annotations

import subprocess
import sys


def test_building_every_parser_imports_no_torch():
    code = (
        "import sys; from herd.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at parser build: {out.stdout.strip()}"
