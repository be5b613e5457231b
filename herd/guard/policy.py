"""Safety policies: the hazard categories a guard's prompt lists, Llama Guard 3's by default.

Llama Guard 3 (model card) classifies against the 14 MLCommons hazard categories S1-S14 named in
its prompt as "S1: Violent Crimes." and so on. A policy is an ordered list of categories: users
remove some (a deployment that allows specialised advice drops S6) or add their own with a
description, and the guard's prompt lists exactly those. Removed categories keep their codes'
gaps (S5 then S7), as the released 1B chat template's `excluded_category_keys` does: a guard
learns codes, so renumbering would change what a code means.

POLICY.toml:

    base = "llama-guard-3"         # or "none": start from no category
    exclude = ["S6", "S8"]          # codes of the base to leave out
    [[category]]                    # added (or replacing a base code with a new text)
    code = "S15"
    name = "Medical Misinformation"
    description = "Claims about treatments that contradict medical consensus."
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from herd.errors import HerdError

# Llama Guard 3's categories, in the order and wording its prompt uses.
LLAMA_GUARD_3 = (
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
)
CODE_PATTERN = re.compile(r"S[1-9][0-9]*")


@dataclass(frozen=True)
class Category:
    code: str  # "S1"
    name: str  # "Violent Crimes" (the prompt adds the full stop)
    description: str = ""  # optional lines under the name (custom categories)

    def render(self) -> str:
        """The category's lines in the prompt's category block, each ending in a newline."""
        line = f"{self.code}: {self.name}.\n"
        return line + (f"{self.description.strip()}\n" if self.description.strip() else "")


@dataclass(frozen=True)
class Policy:
    categories: tuple[Category, ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c.code for c in self.categories)

    def render(self) -> str:
        return "".join(c.render() for c in self.categories)

    def only(self, codes: list[str] | tuple[str, ...], where: str = "categories") -> Policy:
        """The policy restricted to `codes` (kept in the policy's order)."""
        unknown = [c for c in codes if c not in self.codes]
        if unknown:
            raise HerdError(
                f"{where}: unknown category {unknown[0]!r} (this policy has {', '.join(self.codes)})"
            )
        return Policy(tuple(c for c in self.categories if c.code in codes))

    def without(self, codes) -> Policy:
        return Policy(tuple(c for c in self.categories if c.code not in set(codes)))

    def name_of(self, code: str) -> str:
        return next((c.name for c in self.categories if c.code == code), code)


def default_policy() -> Policy:
    """Llama Guard 3's policy: S1-S14."""
    return Policy(tuple(Category(code, name) for code, name in LLAMA_GUARD_3))


def _check_code(code: object, where: str) -> str:
    if not isinstance(code, str) or not CODE_PATTERN.fullmatch(code):
        raise HerdError(f"{where}: category code {code!r}, expected S followed by a number (S15)")
    return code


def parse_codes(text: str, where: str = "--categories") -> list[str]:
    """'S1,S9' -> ['S1', 'S9'] (each a valid code, no repeats)."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise HerdError(f"{where}: expected a comma-separated list of codes such as S1,S9")
    for code in codes:
        _check_code(code, where)
    if len(set(codes)) != len(codes):
        raise HerdError(f"{where}: a category is listed twice in {text!r}")
    return codes


def load_policy(path: str | Path) -> Policy:
    """A policy from POLICY.toml (module docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise HerdError(f"{path}: no such policy file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise HerdError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"base", "exclude", "category"})
    if unknown:
        raise HerdError(f"{path}: unknown key {unknown[0]!r} (expected base, exclude, category)")
    base = data.get("base", "llama-guard-3")
    if base not in ("llama-guard-3", "none"):
        raise HerdError(f"{path}: base {base!r}, expected 'llama-guard-3' or 'none'")
    categories = list(default_policy().categories) if base == "llama-guard-3" else []
    exclude = data.get("exclude", [])
    if not isinstance(exclude, list):
        raise HerdError(f"{path}: exclude must be a list of codes such as ['S6']")
    for code in exclude:
        _check_code(code, f"{path}: exclude")
        if code not in [c.code for c in categories]:
            raise HerdError(f"{path}: exclude names {code}, which the base policy does not have")
    categories = [c for c in categories if c.code not in exclude]
    added = data.get("category", [])
    if not isinstance(added, list):
        raise HerdError(f"{path}: category must be an array of tables ([[category]])")
    for i, entry in enumerate(added):
        where = f"{path}: category {i + 1}"
        if not isinstance(entry, dict) or set(entry) - {"code", "name", "description"}:
            raise HerdError(f"{where}: expected the keys code, name and optional description")
        code = _check_code(entry.get("code"), where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip().rstrip("."):
            raise HerdError(f"{where}: name must be a non-empty string")
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise HerdError(f"{where}: description must be a string")
        made = Category(code, name.strip().rstrip("."), description)
        at = next((j for j, c in enumerate(categories) if c.code == code), None)
        if at is None:
            categories.append(made)
        else:
            categories[at] = made
    if not categories:
        raise HerdError(f"{path}: the policy has no category left")
    return Policy(tuple(categories))


def resolve_policy(policy_path: str | None, categories: str | None) -> Policy:
    """The policy of `--policy FILE` (default Llama Guard 3's), restricted by `--categories`."""
    policy = load_policy(policy_path) if policy_path else default_policy()
    return policy.only(parse_codes(categories)) if categories else policy
