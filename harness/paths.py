"""Where harness finds what it ships, and where it writes what the user measures.

The shipped configs and benchmark peers live once, in the repository's top-level ``configs/`` and
``benchmarks/peers/``; every wheel maps them into the packages ``harness._configs`` and ``harness._peers``
(pyproject's ``package-dir``), so a plain ``pip install`` finds them through the import system. An
editable install does not map nested packages, so there they are read from the checkout itself.

Benchmark results never go inside the installed package: ``harness bench`` writes to ``--ledger DIR``, by default
``benchmarks/results`` of the harness checkout that contains the current directory, else of the current directory.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
SHIPPED = {"configs": ("harness._configs", "configs"), "peers": ("harness._peers", "benchmarks/peers")}


def shipped(kind: str) -> Path:
    """The folder of shipped ``kind`` files (``configs`` or ``peers``): in the wheel, else in the checkout."""
    package, in_checkout = SHIPPED[kind]
    spec = importlib.util.find_spec(package)  # the packages are namespaces: no __init__.py, nothing imported
    if spec is None or not spec.submodule_search_locations:  # an editable install or a bare checkout on sys.path
        return PACKAGE_ROOT.parent / in_checkout
    return Path(next(iter(spec.submodule_search_locations)))


def is_checkout(directory: Path) -> bool:
    """Whether ``directory`` is the root of a harness source checkout (its pyproject names the harness project)."""
    try:
        project = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "harness" and (directory / "harness").is_dir()


def checkout_root(start: Path | None = None) -> Path | None:
    """The harness checkout that contains ``start`` (default: the current directory), or None."""
    start = (start or Path.cwd()).resolve()
    return next((d for d in (start, *start.parents) if is_checkout(d)), None)


def default_bench_dir(start: Path | None = None) -> Path:
    """``benchmarks/`` of the enclosing harness checkout, else of the current directory: the ledger goes to its
    ``results/``, ``harness bench report`` writes LEADERBOARD.md and the plots beside it."""
    return (checkout_root(start) or (start or Path.cwd()).resolve()) / "benchmarks"


def default_ledger_dir(start: Path | None = None) -> Path:
    """Where ``harness bench`` appends and ``bench report``/``bench check`` read when no ``--ledger`` is given."""
    return default_bench_dir(start) / "results"
