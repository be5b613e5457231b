"""Tokenizer throughput benchmark: herd's Llama 3 and Llama 2 tokenizers against the libraries
they wrap (tiktoken and sentencepiece, called directly), in one process on the same documents.

    .venv/bin/python bench/tokenizer_speed.py
    .venv/bin/python bench/tokenizer_speed.py --megabytes 2 --repeats 1 --no-all --no-long   # quick look
    .venv/bin/python bench/tokenizer_speed.py --corpus some.txt --out /tmp/tokenize.json

Input: ~10 MB (`--megabytes`) of mixed text built deterministically (`--seed`) by
bench/sample_text.py from sample sentences and code snippets, shuffled, repeated and varied at
random: English prose, source code, accented Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
Han, Japanese, Hangul, Thai, emoji, numbers and whitespace runs, cut into documents of a few KB
each (`--doc-kb`). Or a text file of your own (`--corpus`), cut the same way. Nothing is
downloaded.

What is timed (throughput is MB/s of UTF-8 input, MB = 10^6 bytes; each figure is the best of
`--repeats` timed runs over all documents, after one untimed warm-up run of every engine):

  Llama 3, one thread   tiktoken used directly (an Encoding built from the same ranks file and
                        herd's split pattern, no special tokens): [enc.encode_ordinary(d) ...],
                        against herd: [tok.encode(d) ...]. Target: herd >= 0.9x tiktoken.
  Llama 3, N threads    tok.encode_batch(docs, num_threads=N) against num_threads=1, N = --threads
                        (all CPUs by default). Target: >= 1.6x. tiktoken's own
                        encode_ordinary_batch at N and 1 threads is shown for reference.
  Llama 3, long texts   (--long) the same one-thread pair on the documents joined into texts of
                        ~300,000 characters: above 25,000 characters herd scans for long runs.
  Llama 2 (--all)       sentencepiece used directly, sp.encode(docs, num_threads=1), against herd's
                        [tok.encode(d) ...] (target 0.9x), and both batch encoders at N threads,
                        on the first --sp-megabytes of the documents.

Interleaving: the engines being compared take turns. Each run is cut into `--slices` slices of
the documents (a tenth each by default); on every slice each engine encodes in turn, and the order
rotates from slice to slice and run to run. A slow spell of the machine (seconds long on a shared
virtual machine) then lands on all engines alike, which keeps the ratios steadier than timing
whole runs back to back. An engine's time for a run is the sum of its slices.

Every run's ids, the warm-up's included, are checked against the peer library's. (herd encodes a
text of over 400,000 characters, or with a run of over 25,000 whitespace or non-whitespace
characters, in pieces, as Meta's reference tokenizer does; such texts, possible only with
--corpus and a large --doc-kb, may legitimately get ids that differ from tiktoken's.) The first pass
over fresh strings also fills CPython's cached UTF-8 copy of each non-ASCII string (tiktoken and
sentencepiece both read it), so the engine that ran first would otherwise pay a conversion the
others skip; that cold pass is timed and reported apart. The garbage collector is off while
timing (these workloads make no reference cycles).

Timings are only as quiet as the machine. Before starting, the benchmark sleeps half a second and
reports how busy the CPUs were meanwhile (other processes, from /proc/stat on Linux), warning when
it is over 10%; the summary's "spread" column is how much slower each engine's slowest run was
than its best.

Exit status: 0 when all ids agree (a missed target is reported, not an error), 1 when ids differ,
2 when a tokenizer or corpus file is missing or unusable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from sample_text import corpus_docs, join_docs, synthetic_docs, utf8_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.references

from tests.references import LLAMA2_TOKENIZER, ReferenceFileError, llama3_tokenizer_location


def _default_llama3() -> Path:
    """The tests' Llama 3 reference (inside the installed llama-models dev dependency)."""
    try:
        return llama3_tokenizer_location()
    except ReferenceFileError:  # not installed: main() reports the missing file
        return Path("llama_models/llama3/tokenizer.model")


# The same files the tests use (tests/references.py).
DEFAULT_LLAMA3 = _default_llama3()
DEFAULT_LLAMA2 = LLAMA2_TOKENIZER

TARGET_SINGLE = 0.9  # herd / library, one thread
TARGET_THREADS = 1.6  # herd encode_batch at N threads / at 1 thread
LONG_TEXT_CHARS = 300_000  # below herd's 400,000-character chunk, above its 25,000-character scan


# --- timing -------------------------------------------------------------------------------------


@contextmanager
def gc_off() -> Iterator[None]:
    """No collector passes while timing (these workloads make no reference cycles)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(fn: Callable[..., list], *args) -> tuple[float, list]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def slice_bounds(docs: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous runs of documents with about the same number of UTF-8 bytes."""
    sizes = [len(d.encode("utf-8")) for d in docs]
    total = sum(sizes)
    bounds, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        if acc >= total * (len(bounds) + 1) / parts:
            bounds.append((start, i + 1))
            start = i + 1
    if start < len(docs):
        bounds.append((start, len(docs)))
    return bounds


def mismatches(out: Sequence[Sequence[int]], ref: Sequence[Sequence[int]]) -> int:
    """How many documents' ids differ from the reference (list, array or numpy rows)."""
    if len(out) != len(ref):
        return max(len(out), len(ref))
    return sum(1 for a, b in zip(out, ref, strict=True) if list(a) != list(b))


@dataclass
class Engine:
    key: str
    label: str
    fn: Callable[[list[str]], list]
    nbytes: int
    seconds: list[float] = field(default_factory=list)
    bad_docs: int = 0  # most documents whose ids differed in any one run

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def mb_s(self) -> float:
        return self.nbytes / 1e6 / self.best

    def record(self) -> dict:
        return {
            "label": self.label,
            "bytes": self.nbytes,
            "seconds": [round(s, 5) for s in self.seconds],
            "best_s": round(self.best, 5),
            "mb_per_s": round(self.mb_s, 3),
            "mismatched_docs": self.bad_docs,
        }


def race(
    engines: list[Engine],
    docs: list[str],
    ref: Sequence[Sequence[int]],
    repeats: int,
    parts: int,
) -> None:
    """Time each engine `repeats` times over all documents, checking ids every time.

    Every engine first encodes everything once, untimed (a warm-up). A run is cut into `parts`
    slices of the documents; on each slice the engines take turns, and the order rotates from
    slice to slice and run to run, so a slow spell of the machine falls on all engines alike.
    An engine's time for a run is the sum of its slices.
    """
    bounds = slice_bounds(docs, parts)
    with gc_off():
        for e in engines:
            _, out = timed(e.fn, docs)
            e.bad_docs = max(e.bad_docs, mismatches(out, ref))
            del out
        for r in range(repeats):
            total = [0.0] * len(engines)
            bad = [0] * len(engines)
            for j, (a, b) in enumerate(bounds):
                part, part_ref = docs[a:b], ref[a:b]
                k = (r + j) % len(engines)
                for i in list(range(k, len(engines))) + list(range(k)):
                    seconds, out = timed(engines[i].fn, part)
                    total[i] += seconds
                    bad[i] += mismatches(out, part_ref)
                    del out
            for e, seconds, wrong in zip(engines, total, bad, strict=True):
                e.seconds.append(seconds)
                e.bad_docs = max(e.bad_docs, wrong)
            line = "  ".join(f"{e.label} {e.nbytes / 1e6 / e.seconds[-1]:7.2f}" for e in engines)
            print(f"    run {r + 1}/{repeats}: {line}  MB/s", flush=True)


@dataclass
class Ratio:
    key: str
    label: str
    value: float | None
    target: float | None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        if self.target is None:
            return "info"
        return "PASS" if self.value >= self.target else "MISS"

    def record(self) -> dict:
        return {
            "label": self.label,
            "value": None if self.value is None else round(self.value, 4),
            "target": self.target,
            "verdict": self.verdict,
        }


# --- main ---------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as the description, and each option's default."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/tokenizer_speed.py",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--megabytes",
        type=float,
        default=10.0,
        metavar="MB",
        help="size of the generated corpus in MB of UTF-8 (ignored with --corpus)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the corpus generator")
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="PATH",
        help="encode this UTF-8 text file (cut into documents at line ends) instead of the "
        "generated mixed-script corpus",
    )
    p.add_argument(
        "--doc-kb",
        type=float,
        nargs=2,
        default=(1.5, 5.5),
        metavar=("MIN", "MAX"),
        help="document size range in KB (10^3 bytes); each document's size is drawn uniformly",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=DEFAULT_LLAMA3,
        metavar="PATH",
        help="Llama 3 tiktoken ranks file (tokenizer.model), loaded by herd and by tiktoken",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="thread count of the batch encoders; the default is the CPU count",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="N",
        help="timed runs per engine; the best one is reported",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=10,
        metavar="K",
        help="each timed run is cut into K slices of the documents and the engines being compared "
        "take turns slice by slice (order rotating), so a slow spell of the machine hits them "
        "alike; 1 = each engine encodes everything in one go",
    )
    p.add_argument(
        "--all",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the Llama 2 sentencepiece tokenizer (herd against sentencepiece)",
    )
    p.add_argument(
        "--llama2-tokenizer",
        type=Path,
        default=DEFAULT_LLAMA2,
        metavar="PATH",
        help="Llama 2 sentencepiece model for --all",
    )
    p.add_argument(
        "--sp-megabytes",
        type=float,
        default=3.0,
        metavar="MB",
        help="--all encodes only the first documents, up to this many MB",
    )
    p.add_argument(
        "--long",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also time the one-thread Llama 3 pair on the documents joined into texts of "
        f"~{LONG_TEXT_CHARS:,} characters (herd scans texts over 25,000 characters for long runs)",
    )
    p.add_argument(
        "--out", type=Path, default=None, metavar="OUT", help="write all figures to OUT as JSON"
    )
    args = p.parse_args(argv)
    if min(args.repeats, args.threads, args.slices) < 1:
        p.error("--repeats, --threads and --slices must be at least 1")
    if args.megabytes <= 0 or args.sp_megabytes <= 0:
        p.error("--megabytes and --sp-megabytes must be positive")
    if not 0 < args.doc_kb[0] <= args.doc_kb[1]:
        p.error("--doc-kb needs 0 < MIN <= MAX")
    return args


def others_cpu_use(seconds: float = 0.5) -> float | None:
    """Fraction of all CPUs' time spent busy over `seconds` while this process sleeps (Linux)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user..steal; guest time is already in user

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    return None if elapsed <= 0 else 1 - (idle1 - idle0) / elapsed


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tokenizer.is_file():
        return fail(
            f"Llama 3 tokenizer not found: {args.tokenizer}\n"
            "  pass --tokenizer PATH (a tiktoken ranks file, Meta's tokenizer.model for Llama 3)"
        )
    if args.all and not args.llama2_tokenizer.is_file():
        return fail(
            f"Llama 2 tokenizer not found: {args.llama2_tokenizer}\n"
            "  pass --llama2-tokenizer PATH, or --no-all to skip the sentencepiece comparison"
        )
    if args.corpus is not None and not args.corpus.is_file():
        return fail(f"corpus file not found: {args.corpus}")

    import sentencepiece
    import tiktoken
    import tiktoken.load

    import herd
    import herd.tokenizer.llama3 as herd_llama3

    threads = args.threads
    busy = others_cpu_use()
    print(
        f"python {platform.python_version()}, tiktoken {tiktoken.__version__}, "
        f"sentencepiece {sentencepiece.__version__}, herd {version('herd')}"
    )
    print(
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"batch threads N = {threads}, repeats {args.repeats}, slices {args.slices}"
    )
    if busy is not None:
        print(f"CPU use by other processes just before starting: {100 * busy:.0f}%")
        if busy > 0.1:
            print("  note: the machine is busy; timings, thread speed-ups above all, will be noisy")

    # corpus
    start = time.perf_counter()
    if args.corpus is not None:
        docs = corpus_docs(args.corpus, args.seed, tuple(args.doc_kb))
        source = str(args.corpus)
    else:
        docs = synthetic_docs(args.megabytes, args.seed, tuple(args.doc_kb))
        source = f"generated mixed text, seed {args.seed}"
    if not docs:
        return fail(f"{args.corpus}: empty corpus")
    nbytes = utf8_bytes(docs)
    nchars = sum(len(d) for d in docs)
    print(
        f"corpus: {source}: {len(docs)} documents, {nbytes / 1e6:.2f} MB UTF-8, "
        f"{nchars / 1e6:.2f} M characters ({time.perf_counter() - start:.1f}s to build)"
    )

    # tokenizers
    try:
        tok = herd.load_tokenizer(args.tokenizer)
    except herd.HerdError as e:
        return fail(str(e))
    if tok.kind != "llama3-tiktoken":
        return fail(f"{args.tokenizer} is a {tok.kind} tokenizer, not a Llama 3 tiktoken file")
    enc = tiktoken.Encoding(
        "llama3",
        pat_str=herd_llama3.PATTERN,
        mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(args.tokenizer)),
        special_tokens={},
    )

    results: dict = {
        "config": {
            "corpus": source,
            "documents": len(docs),
            "bytes": nbytes,
            "characters": nchars,
            "seed": args.seed,
            "doc_kb": list(args.doc_kb),
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "slices": args.slices,
            "cpu_busy_before_start": None if busy is None else round(busy, 4),
            "python": platform.python_version(),
            "tiktoken": tiktoken.__version__,
            "sentencepiece": sentencepiece.__version__,
            "tokenizer": str(args.tokenizer),
        },
        "engines": {},
        "cold_pass_s": {},
        "ratios": {},
    }
    engines: dict[str, Engine] = {}
    ratios: list[Ratio] = []
    bad = 0

    # --- Llama 3, one thread ---
    section(f"Llama 3, one thread ({len(docs)} documents)")
    with gc_off():
        cold, ref = timed(lambda: [enc.encode_ordinary(d) for d in docs])
    results["cold_pass_s"]["llama3_tiktoken"] = round(cold, 4)
    ntokens = sum(len(ids) for ids in ref)
    results["config"]["llama3_tokens"] = ntokens
    print(
        f"  untimed first pass (tiktoken, fresh strings): {nbytes / 1e6 / cold:.2f} MB/s; "
        f"{ntokens:,} tokens, {nbytes / ntokens:.2f} bytes/token"
    )
    pair = [
        Engine(
            "llama3_tiktoken", "tiktoken", lambda ds: [enc.encode_ordinary(d) for d in ds], nbytes
        ),
        Engine("llama3_herd", "herd", lambda ds: [tok.encode(d) for d in ds], nbytes),
    ]
    race(pair, docs, ref, args.repeats, args.slices)
    engines.update((e.key, e) for e in pair)
    with gc_off():
        scan_s, _ = timed(lambda: [list(herd_llama3.split_long_runs(d)) for d in docs])
    results["herd_long_run_scan_s"] = round(scan_s, 5)
    print(
        f"  herd's long-run scan alone (split_long_runs over every document): "
        f"{scan_s * 1e3:.1f} ms, {100 * scan_s / engines['llama3_herd'].best:.1f}% of herd's time"
    )
    ratios.append(
        Ratio(
            "llama3_single",
            "Llama 3 herd / tiktoken, 1 thread",
            engines["llama3_tiktoken"].best / engines["llama3_herd"].best,
            TARGET_SINGLE,
        )
    )

    # --- Llama 3, N threads ---
    section(f"Llama 3, batch encoders, N = {threads} threads against 1")
    batch = [
        Engine(
            f"llama3_herd_batch_{threads}",
            f"herd x{threads}",
            lambda ds: tok.encode_batch(ds, num_threads=threads),
            nbytes,
        ),
        Engine(
            "llama3_herd_batch_1",
            "herd x1",
            lambda ds: tok.encode_batch(ds, num_threads=1),
            nbytes,
        ),
        Engine(
            f"llama3_tiktoken_batch_{threads}",
            f"tiktoken x{threads}",
            lambda ds: enc.encode_ordinary_batch(ds, num_threads=threads),
            nbytes,
        ),
        Engine(
            "llama3_tiktoken_batch_1",
            "tiktoken x1",
            lambda ds: enc.encode_ordinary_batch(ds, num_threads=1),
            nbytes,
        ),
    ]
    race(batch, docs, ref, args.repeats, args.slices)
    engines.update((e.key, e) for e in batch)
    herd_n, herd_1, tk_n, tk_1 = batch
    ratios += [
        Ratio(
            "llama3_herd_thread_speedup",
            f"Llama 3 herd encode_batch x{threads} / x1",
            herd_1.best / herd_n.best if threads > 1 else None,
            TARGET_THREADS,
        ),
        Ratio(
            "llama3_tiktoken_thread_speedup",
            f"Llama 3 tiktoken encode_ordinary_batch x{threads} / x1",
            tk_1.best / tk_n.best if threads > 1 else None,
            None,
        ),
        Ratio(
            "llama3_batch",
            f"Llama 3 herd / tiktoken, batch x{threads}",
            tk_n.best / herd_n.best,
            TARGET_SINGLE,
        ),
    ]
    del ref

    # --- Llama 3, long texts ---
    if args.long:
        texts = join_docs(docs, LONG_TEXT_CHARS, herd_llama3.MAX_ENCODE_CHARS)
        section(f"Llama 3, one thread, {len(texts)} long texts of ~{LONG_TEXT_CHARS:,} characters")
        long_ref = [enc.encode_ordinary(t) for t in texts]
        longs = [
            Engine(
                "llama3_long_tiktoken",
                "tiktoken",
                lambda ts: [enc.encode_ordinary(t) for t in ts],
                nbytes,
            ),
            Engine("llama3_long_herd", "herd", lambda ts: [tok.encode(t) for t in ts], nbytes),
        ]
        race(longs, texts, long_ref, args.repeats, args.slices)
        engines.update((e.key, e) for e in longs)
        with gc_off():
            scan_s, _ = timed(lambda: [list(herd_llama3.split_long_runs(t)) for t in texts])
        results["herd_long_run_scan_long_texts_s"] = round(scan_s, 5)
        print(
            f"  herd's long-run scan alone: {scan_s * 1e3:.0f} ms "
            f"({nbytes / 1e6 / scan_s:.1f} MB/s), "
            f"{100 * scan_s / engines['llama3_long_herd'].best:.0f}% of herd's time"
        )
        ratios.append(
            Ratio(
                "llama3_long_single",
                "Llama 3 herd / tiktoken, 1 thread, long texts (extra)",
                longs[0].best / longs[1].best,
                TARGET_SINGLE,
            )
        )
        del long_ref, texts

    # --- Llama 2 ---
    if args.all:
        sp_docs: list[str] = []
        size = 0
        for d in docs:
            if size >= args.sp_megabytes * 1e6:
                break
            sp_docs.append(d)
            size += len(d.encode("utf-8"))
        section(f"Llama 2 (sentencepiece), {len(sp_docs)} documents, {size / 1e6:.2f} MB")
        try:
            tok2 = herd.load_tokenizer(args.llama2_tokenizer)
        except herd.HerdError as e:
            return fail(str(e))
        if tok2.kind != "llama2-sentencepiece":
            return fail(f"{args.llama2_tokenizer} is a {tok2.kind} tokenizer, not sentencepiece")
        sp = sentencepiece.SentencePieceProcessor(model_file=str(args.llama2_tokenizer))
        with gc_off():
            cold, sp_ref = timed(lambda: sp.encode(sp_docs, num_threads=1))
        results["cold_pass_s"]["llama2_sentencepiece"] = round(cold, 4)
        print(f"  untimed first pass (sentencepiece): {size / 1e6 / cold:.2f} MB/s")
        sps = [
            Engine(
                "llama2_sentencepiece",
                "sentencepiece x1",
                lambda ds: sp.encode(ds, num_threads=1),
                size,
            ),
            Engine("llama2_herd", "herd", lambda ds: [tok2.encode(d) for d in ds], size),
            Engine(
                f"llama2_sentencepiece_batch_{threads}",
                f"sentencepiece x{threads}",
                lambda ds: sp.encode(ds, num_threads=threads),
                size,
            ),
            Engine(
                f"llama2_herd_batch_{threads}",
                f"herd x{threads}",
                lambda ds: tok2.encode_batch(ds, num_threads=threads),
                size,
            ),
        ]
        race(sps, sp_docs, sp_ref, args.repeats, args.slices)
        engines.update((e.key, e) for e in sps)
        ratios += [
            Ratio(
                "llama2_single",
                "Llama 2 herd / sentencepiece, 1 thread",
                sps[0].best / sps[1].best,
                TARGET_SINGLE,
            ),
            Ratio(
                "llama2_batch",
                f"Llama 2 herd / sentencepiece, batch x{threads}",
                sps[2].best / sps[3].best,
                TARGET_SINGLE,
            ),
        ]
        del sp_ref

    # --- summary ---
    section("summary (best of each engine's runs)")
    print(f"  {'engine':<44} {'MB':>6} {'best s':>8} {'MB/s':>8} {'spread':>7}  ids")
    for e in engines.values():
        spread = max(e.seconds) / e.best - 1
        ids = "same" if e.bad_docs == 0 else f"{e.bad_docs} docs differ"
        print(
            f"  {e.key:<44} {e.nbytes / 1e6:6.2f} {e.best:8.3f} {e.mb_s:8.2f} "
            f"{100 * spread:6.1f}%  {ids}"
        )
        bad += e.bad_docs
    print()
    for r in ratios:
        value = "n/a" if r.value is None else f"{r.value:.3f}"
        target = "" if r.target is None else f"(target >= {r.target})"
        print(f"  {r.label:<56} {value:>6}  {r.verdict:<4} {target}".rstrip())
    if bad:
        print("\nids DIFFER from the reference library: see the ids column")
    else:
        print("\nids identical to the reference library in every timed run")

    results["engines"] = {k: e.record() for k, e in engines.items()}
    results["ratios"] = {r.key: r.record() for r in ratios}
    results["ids_identical"] = bad == 0
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
