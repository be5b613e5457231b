"""A generated multilingual corpus for vocabulary tests and benchmarks (no download).

Twelve artificial languages in six scripts (Latin, Cyrillic, Greek, Arabic, Devanagari, Han).
Languages of one family share a lexicon: each word of the family's lexicon is kept by a member
language or replaced by a member-specific variant (new final syllable) with probability 0.35, so
members overlap lexically and other families do not, which is the structure XLM-V's clustering is
meant to find. Word frequencies are Zipfian and sentences are 6-14 words. Sizes are deliberately
unbalanced: the low-resource members get a tenth of the text of the high-resource ones.
"""

from __future__ import annotations

import random
from pathlib import Path

# script -> (consonants, vowels, word separator, sentence end, has case)
SCRIPTS = {
    "Latn": ("ptkbdgmnslrvfzh", "aeiou", " ", ".", True),
    "Latn2": ("kqxzjwcyrnt", "aeiouy", " ", ".", True),
    "Cyrl": ("бвгджзклмнпрстфхцчш", "аеиоуыэюя", " ", ".", True),
    "Grek": ("βγδζθκλμνξπρστφχψ", "αεηιουω", " ", ".", True),
    "Arab": ("بتثجحخدذرزسشصضطظعغفقكلمنهوي", "اوي", " ", ".", False),
    "Deva": ("कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह", "ािीुूेैोौ", " ", "।", False),
    "Hani": ("", "", "", "。", False),
}

# language -> (family, script, relative size); families share a lexicon within themselves
LANGUAGES = {
    "ala_Latn": ("ala", "Latn", 10),
    "alb_Latn": ("ala", "Latn", 10),
    "alc_Latn": ("ala", "Latn", 1),
    "kra_Latn": ("kra", "Latn2", 6),
    "krb_Latn": ("kra", "Latn2", 1),
    "ruz_Cyrl": ("ruz", "Cyrl", 10),
    "rux_Cyrl": ("ruz", "Cyrl", 1),
    "ell_Grek": ("ell", "Grek", 1),
    "ara_Arab": ("ara", "Arab", 6),
    "hna_Deva": ("hna", "Deva", 6),
    "hnb_Deva": ("hna", "Deva", 1),
    "zha_Hani": ("zha", "Hani", 6),
}
LOW_RESOURCE = sorted(lang for lang, (_, _, size) in LANGUAGES.items() if size == 1)


def _syllable(rng: random.Random, script: str) -> str:
    if script == "Hani":
        return chr(0x4E00 + rng.randrange(800))
    consonants, vowels, *_ = SCRIPTS[script]
    s = rng.choice(consonants) + rng.choice(vowels)
    return s + rng.choice(consonants) if rng.random() < 0.3 else s


def _word(rng: random.Random, script: str) -> str:
    return "".join(_syllable(rng, script) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))


def _lexicons(seed: int, words: int) -> dict[str, list[str]]:
    """Each language's word list: its family's words, some replaced by language variants."""
    families: dict[str, list[str]] = {}
    out = {}
    for lang, (family, script, _) in LANGUAGES.items():
        if family not in families:
            rng = random.Random(f"{seed}-{family}")
            families[family] = [_word(rng, script) for _ in range(words)]
        rng = random.Random(f"{seed}-{lang}")
        out[lang] = [
            w[:-1] + _syllable(rng, script) if rng.random() < 0.35 else w for w in families[family]
        ]
    return out


def sentences(lang: str, n_chars: int, seed: int = 0, words: int = 3000) -> list[str]:
    """About `n_chars` characters of sentences in `lang`."""
    lexicon = _lexicons(seed, words)[lang]
    _, script, _ = LANGUAGES[lang]
    _, _, sep, end, cased = SCRIPTS[script]
    rng = random.Random(f"{seed}-{lang}-text")
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(lexicon))]
    out, total = [], 0
    while total < n_chars:
        ws = rng.choices(lexicon, weights, k=rng.randint(6, 14))
        text = sep.join(ws)
        text = (text[0].upper() + text[1:] if cased else text) + end
        out.append(text)
        total += len(text) + 1
    return out


def write_corpus(folder: Path, chars_per_unit: int = 20_000, seed: int = 0) -> Path:
    """One `<lang>.txt` per language, `size * chars_per_unit` characters each, a sentence a line."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang, (_, _, size) in LANGUAGES.items():
        lines = sentences(lang, size * chars_per_unit, seed)
        (folder / f"{lang}.txt").write_text("\n".join(lines) + "\n", "utf-8")
    return folder
