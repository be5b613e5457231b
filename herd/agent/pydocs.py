"""Python's own documentation as documents for the agent's default search index: the pydoc
topics and the docstrings of the standard library's public modules, classes and functions.

`herd.agent.search.stdlib_index` runs `write_stdlib_documents` in a separate, isolated
interpreter (`python -I`): the imports it needs stay out of the caller, and only the
interpreter's own library is on its path, so no third-party or user code runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys

from tqdm import tqdm

# Never imported while walking the stdlib: they open windows or browsers, print, change the
# terminal (readline), are test suites, or would come from site-packages (setuptools' distutils).
STDLIB_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "tests",
    "lib2to3", "distutils", "readline", "rlcompleter", "ensurepip", "pydoc_data",
}  # fmt: skip
# C and platform modules whose functions users reach through another name.
PRESENTED_AS = {"posix": "os", "nt": "os", "posixpath": "os.path", "ntpath": "os.path",
                "genericpath": "os.path"}  # fmt: skip


def write_stdlib_documents(path: str, modules: list[str] | None, show_progress: bool) -> None:
    """Runs in the isolated child: the pydoc topics and every public docstring, as JSONL."""
    import importlib
    import inspect
    import pkgutil
    import warnings
    from pydoc_data.topics import topics

    # Only the interpreter's own library may be imported: site-packages (and anything shadowing
    # a stdlib name there) is off the path, so no third-party or user code runs.
    base = (os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix))

    def in_stdlib(path: str) -> bool:
        path = os.path.realpath(path)
        return path.startswith(base) and not re.search(r"(site|dist)-packages", path)

    sys.path[:] = [p for p in sys.path if in_stdlib(p)]
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(("_", "xx")))
    names = [n for n in names if n not in {*STDLIB_SKIP, *PRESENTED_AS}]
    names = names if modules is None else modules
    seen: set[int] = set()
    rows = []
    for topic, text in sorted(topics.items()):
        # A topic opens with its heading ('The "for" statement' over a row of *s): the title.
        head, rule = [*text.split("\n", 2), "", ""][:2]
        title = head.strip() if rule and set(rule) <= set("*=-") else topic
        rows.append({"title": title, "source": f"pydoc topic {topic}", "text": text})

    def document(obj, title: str) -> None:
        doc = getattr(obj, "__doc__", None)
        # One word (a C struct member's docstring is its name) says nothing.
        if not isinstance(doc, str) or len(doc.split()) < 2 or id(obj) in seen:
            return
        seen.add(id(obj))
        try:
            signature = str(inspect.signature(obj)) if callable(obj) else ""
        except Exception:  # builtins without one; odd defaults (curses) fail to evaluate
            signature = ""
        text = f"{title}{signature}\n\n{inspect.cleandoc(doc)}"
        rows.append({"title": title, "source": f"pydoc {title}", "text": text})

    def members(name: str, attr: str, obj) -> None:
        owner = getattr(obj, "__module__", None)
        # Defined here, or in a private helper (_json, _io) or a platform module it presents.
        if not isinstance(owner, str) or not (
            owner == name
            or PRESENTED_AS.get(owner) == name
            or any(p.startswith("_") for p in owner.split("."))
        ):
            return
        if inspect.isclass(obj):
            document(obj, f"{name}.{attr}")
            for member, value in list(vars(obj).items()):
                if not member.startswith("_"):
                    value = getattr(value, "__func__", getattr(value, "fget", value))
                    document(value, f"{name}.{attr}.{member}")
        elif inspect.isroutine(obj) or obj.__doc__ != type(obj).__doc__:
            document(obj, f"{name}.{attr}")  # functions; typing's forms have their own doc

    def walk(name: str) -> None:
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except (Exception, SystemExit):  # a module of another platform, or one that exits
            return
        file = getattr(module, "__file__", None)
        if file and not in_stdlib(file):
            return
        document(module, name)
        public = getattr(module, "__all__", None)
        if not isinstance(public, list | tuple):
            public = [n for n in dir(module) if not n.startswith("_")]
        for attr in public:
            try:
                members(name, attr, getattr(module, attr))
            except Exception:  # a lazy attribute that fails, a descriptor that raises
                continue
        if name == "os":
            walk("os.path")  # an alias of posixpath, not a submodule pkgutil would find
        if hasattr(module, "__path__") and name != "encodings":  # codec tables, no prose
            for sub in pkgutil.iter_modules(module.__path__):
                if not sub.name.startswith("_") and sub.name not in STDLIB_SKIP:
                    walk(f"{name}.{sub.name}")

    for name in tqdm(
        names, desc="python docs", unit="module", disable=None if show_progress else True
    ):
        walk(name)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
