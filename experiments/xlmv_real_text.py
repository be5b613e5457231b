"""XLM-V against the joint baseline on real multilingual text: the translated UI strings that
Debian's packages ship as gettext catalogs (/usr/share/locale/<lang>/LC_MESSAGES/*.mo).

Corpus: 18 languages in 7 scripts. Every catalog of a language but the iso-codes name lists
(iso_*.mo) is read; each translated message (msgstr differing from its msgid) is split into lines,
lines are deduplicated, ordered by a hash of their text and taken until a character budget is met:
--high-chars (default 250,000) for twelve languages, --low-chars (default 25,000, a tenth) for the
six low-resource ones (one per script family that has a high-resource relative, plus Georgian and
Hebrew, which have none). Han and Kana are left out on purpose: their thousands of characters
must all be pieces, which swamps vocabularies of 4,000-16,000.

For each --sizes value the script builds herd's XLM-V vocabulary (herd.vocab.build.build) and the
joint baseline (build_joint) on the same training lines and scores both on the held-out lines
(every tenth line by hash, herd.vocab.corpus) with herd.vocab.compare: mean held-out ALP over all
languages and over the low-resource ones, the low-resource languages where XLM-V's ALP is higher,
and mean tokens per line. It prints the clusters (with k-means' inertia) and a table.

    .venv/bin/python experiments/xlmv_real_text.py          # 4k-16k: about 4 minutes on 2 cores
    .venv/bin/python experiments/xlmv_real_text.py --sizes 6000 --out /tmp/x.json

The results and their analysis are in docs/vocabularies.md ("XLM-V on real text").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# locale directory -> herd language code (ISO 639-3 + ISO 15924 script)
HIGH = {
    "de": "deu_Latn",
    "fr": "fra_Latn",
    "es": "spa_Latn",
    "it": "ita_Latn",
    "pl": "pol_Latn",
    "cs": "ces_Latn",
    "sv": "swe_Latn",
    "ru": "rus_Cyrl",
    "uk": "ukr_Cyrl",
    "el": "ell_Grek",
    "hi": "hin_Deva",
    "ar": "arb_Arab",
}
LOW = {
    "gl": "glg_Latn",  # Galician, beside Spanish
    "sk": "slk_Latn",  # Slovak, beside Czech
    "be": "bel_Cyrl",  # Belarusian, beside Russian and Ukrainian
    "mr": "mar_Deva",  # Marathi, beside Hindi
    "ka": "kat_Geor",  # Georgian: its own script
    "he": "heb_Hebr",  # Hebrew: its own script
}


def read_mo(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a compiled gettext catalog, decoded with the charset its header
    names. Plural forms come back as one msgstr per form; contexts are dropped from msgid."""
    data = path.read_bytes()
    if len(data) < 20:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if order is None:
        raise ValueError(f"{path}: not a .mo file")
    count, ids_at, strs_at = struct.unpack(order + "3I", data[8:20])

    def raw(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i : table + 8 * i + 8])
        return data[offset : offset + length]

    charset = "utf-8"
    pairs = []
    for i in range(count):
        msgid, msgstr = raw(ids_at, i), raw(strs_at, i)
        if not msgid:  # the header: Content-Type: text/plain; charset=...
            for line in msgstr.decode("ascii", "replace").splitlines():
                if line.lower().startswith("content-type:") and "charset=" in line:
                    charset = line.split("charset=")[1].strip() or charset
            continue
        pairs.append((msgid, msgstr))
    out = []
    for msgid, msgstr in pairs:
        try:
            source = msgid.split(b"\x04")[-1].split(b"\x00")[0].decode(charset)
            out.extend((source, form.decode(charset)) for form in msgstr.split(b"\x00"))
        except (UnicodeDecodeError, LookupError):
            continue
    return out


def language_lines(locale_dir: Path, lang: str) -> list[str]:
    """Distinct translated lines of every catalog of `lang` (the iso-codes lists excepted)."""
    lines: set[str] = set()
    for mo in sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo")):
        if mo.name.startswith("iso_"):
            continue
        for msgid, msgstr in read_mo(mo):
            if not msgstr or msgstr == msgid:
                continue
            for line in msgstr.splitlines():
                line = line.strip()
                if any(ch.isalpha() for ch in line):
                    lines.add(line)
    return sorted(lines)


def write_corpus(locale_dir: Path, out: Path, high_chars: int, low_chars: int) -> dict:
    """The corpus folder (<code>.txt per language); returns {code: (lines, chars)}."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for budget, table in ((high_chars, HIGH), (low_chars, LOW)):
        for lang, code in table.items():
            lines = language_lines(locale_dir, lang)
            lines.sort(key=lambda s: hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest())
            taken, chars = [], 0
            for line in lines:
                if chars >= budget:
                    break
                taken.append(line)
                chars += len(line)
            if not taken:
                raise SystemExit(f"{locale_dir / lang}: no translated catalogs")
            (out / f"{code}.txt").write_text("\n".join(taken) + "\n", "utf-8")
            sizes[code] = (len(taken), chars)
    return sizes


def summarise(table: dict, name: str, codes: list[str]) -> dict:
    rows = [table[name][c] for c in codes]
    return {
        "alp": sum(r["alp"] for r in rows) / len(rows),
        "tokens": sum(r["tokens_per_sentence"] for r in rows) / len(rows),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--locale-dir", type=Path, default=Path("/usr/share/locale"))
    p.add_argument("--sizes", default="4000,6000,8000,12000,16000", help="vocabulary sizes")
    p.add_argument("--clusters", type=int, default=7, help="k-means clusters (one per script)")
    p.add_argument("--per-language-size", type=int, default=8000)
    p.add_argument("--high-chars", type=int, default=250_000)
    p.add_argument("--low-chars", type=int, default=25_000)
    p.add_argument("--threads", type=int, default=2, help="parallel sentencepiece trainings")
    p.add_argument("--corpus", type=Path, default=None, help="keep the corpus folder here")
    p.add_argument("--out", type=Path, default=None, metavar="OUT", help="write results as JSON")
    args = p.parse_args(argv)

    from herd.tokenizer import load_tokenizer
    from herd.vocab import unigram
    from herd.vocab.build import build, build_joint
    from herd.vocab.compare import compare
    from herd.vocab.corpus import load_corpus

    with tempfile.TemporaryDirectory(prefix="herd-xlmv-real-") as tmp:
        folder = args.corpus or Path(tmp) / "corpus"
        sizes = write_corpus(args.locale_dir, folder, args.high_chars, args.low_chars)
        corpus = load_corpus(folder)
        low = sorted(LOW.values())
        print(f"corpus {folder}: {len(corpus)} languages")
        for code, (lines, chars) in sizes.items():
            held = len(corpus[code].held_out)
            print(f"  {code}: {lines:>6,} lines {chars:>8,} chars ({held} held out)")
        results = []
        for size in [int(s) for s in args.sizes.split(",")]:
            start = time.perf_counter()
            xlmv = build(
                corpus, size, args.clusters, args.per_language_size, args.threads, progress=False
            )
            xlmv_s = time.perf_counter() - start
            joint = build_joint(corpus, size, threads=args.threads)
            paths = {}
            for name, model in (("xlmv", xlmv["model"]), ("joint", joint)):
                paths[name] = unigram.save(model, Path(tmp) / f"{name}-{size}.model")
            table = compare(corpus, {n: load_tokenizer(p) for n, p in paths.items()})
            codes = xlmv["codes"]
            clusters = [
                sorted(c for c, label in zip(codes, xlmv["labels"], strict=True) if label == k)
                for k in range(args.clusters)
            ]
            row = {
                "size": size,
                "reached": {"xlmv": len(xlmv["model"].pieces), "joint": len(joint.pieces)},
                "inertia": xlmv.get("inertia"),
                "clusters": clusters,
                "capacities": xlmv["capacities"],
                "xlmv_s": xlmv_s,
                "table": table,
            }
            for name in ("xlmv", "joint"):
                row[name] = {
                    "all": summarise(table, name, codes),
                    "low": summarise(table, name, low),
                }
            row["low_wins"] = sum(table["xlmv"][c]["alp"] > table["joint"][c]["alp"] for c in low)
            results.append(row)
            inertia = f", inertia {row['inertia']:.4f}" if row["inertia"] is not None else ""
            print(f"\n{size:,} pieces (XLM-V build {xlmv_s:.0f} s{inertia}):")
            for k, members in enumerate(clusters):
                print(f"  cluster {k}: capacity {xlmv['capacities'][k]:>6,}  {', '.join(members)}")
            print(
                f"  {'language':<10}{'xlmv ALP':>10}{'joint ALP':>11}{'xlmv tok':>10}{'joint tok':>10}"
            )
            for c in codes:
                x, j = table["xlmv"][c], table["joint"][c]
                mark = " *" if c in low else ""
                print(
                    f"  {c:<10}{x['alp']:>10.2f}{j['alp']:>11.2f}"
                    f"{x['tokens_per_sentence']:>10.2f}{j['tokens_per_sentence']:>10.2f}{mark}"
                )
    print(
        "\nheld-out ALP (higher is better), mean over languages; tokens per line; * = low-resource"
    )
    print(
        f"{'size':>7} {'ALP all x':>10} {'joint':>8} {'ALP low x':>10} {'joint':>8} "
        f"{'low wins':>9} {'tok low x':>10} {'joint':>7}"
    )
    for r in results:
        x, j = r["xlmv"], r["joint"]
        print(
            f"{r['size']:>7,} {x['all']['alp']:>10.2f} {j['all']['alp']:>8.2f} "
            f"{x['low']['alp']:>10.2f} {j['low']['alp']:>8.2f} {r['low_wins']:>5}/{len(low)} "
            f"{x['low']['tokens']:>10.2f} {j['low']['tokens']:>7.2f}"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
