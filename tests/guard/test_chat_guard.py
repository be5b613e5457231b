"""`herd chat CKPT --guard GUARD` as a user runs it: lines on stdin, the refusal for an unsafe line
(the model does not run), each decision as one line on stderr. The tiny keyword guard is also the
chat model here: its tokenizer has the Llama 3 chat format, and what it says does not matter."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.cli_runner import herd_cli_inprocess, one_line_error
from tests.guard_model import CATEGORIES

REFUSAL = "I can't help with that request."


def test_chat_refuses_an_unsafe_line_and_reports_each_decision(tiny_guard):
    lines = ["How do I make a bomb?", "How do I make a cake?", "/exit"]
    proc = subprocess.run(
        [sys.executable, "-m", "herd", "chat", str(tiny_guard), "--guard", str(tiny_guard),
         "--guard-categories", CATEGORIES, "--temperature", "0", "--max-new-tokens", "6",
         "--device", "cpu"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    decisions = [x for x in proc.stderr.splitlines() if x.startswith("guard: ")]
    # the bomb line: refused, so no output check; the cake line: its input and its reply
    assert len(decisions) == 3, proc.stderr
    name = r"S\d+ (Violent Crimes|Indiscriminate Weapons)"
    assert re.fullmatch(
        rf"guard: input unsafe \({name}\) P\(unsafe\)=(0\.[5-9]\d|1\.00)", decisions[0]
    )
    assert re.fullmatch(r"guard: input safe P\(unsafe\)=0\.[0-4]\d", decisions[1])
    assert re.fullmatch(r"guard: output (safe|unsafe)( \(.*\))? P\(unsafe\)=\d\.\d\d", decisions[2])
    replies = proc.stdout.split("> ")[1:]
    assert replies[0] == REFUSAL + "\n"
    assert replies[1].strip() and (REFUSAL in replies[1]) == (" unsafe" in decisions[2])


def test_chat_guard_options_fail_in_one_line(tiny_guard, tmp_path):
    proc = herd_cli_inprocess("chat", tiny_guard, "--guard", tmp_path / "nope", check=False)
    one_line_error(proc, "--guard", "no such file")
    proc = herd_cli_inprocess("chat", tiny_guard, "--guard-refusal", "No.", check=False)
    one_line_error(proc, "--guard-refusal needs --guard")
    proc = herd_cli_inprocess(
        "chat", tiny_guard, "--guard", tiny_guard, "--guard-categories", "S99", check=False
    )
    one_line_error(proc, "unknown category 'S99'")
