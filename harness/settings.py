"""Every ``HARNESS_*`` environment variable, read and checked here and nowhere else.

``load()`` parses them all at once into a frozen :class:`Settings`; a bad value is one :class:`HarnessError` line
naming the variable and what it allows. Three parsers cover them: a switch (``1/true/yes/on`` or
``0/false/no/off``), a positive integer, and a directory or ``off`` (plus the notebook's ``HARNESS_REPO``, a pip
requirement taken as it is). An empty variable counts as unset.

Config keys win over variables that duplicate them: ``config.distributed`` is ``None`` unless a config sets it,
and only then does ``HARNESS_DISTRIBUTED`` decide (see :func:`harness.runtime.initialize_distributed`).
README's "Settings (environment variables)" table lists the same variables as :data:`VARIABLES` (a test checks).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The parsed variables (defaults when unset)."""

    offline: bool = False  # HARNESS_OFFLINE
    data_cache: Path | None = None  # HARNESS_DATA_CACHE (None: off)
    compilation_cache: Path | None = None  # HARNESS_COMPILATION_CACHE (None: off)
    cpu_devices: int | None = None  # HARNESS_CPU_DEVICES (None: JAX's own device count)
    distributed: bool | None = None  # HARNESS_DISTRIBUTED (None: unset; a config's setting decides)
    distributed_timeout: int = 300  # HARNESS_DISTRIBUTED_TIMEOUT, seconds
    notebook_small: bool = False  # HARNESS_NOTEBOOK_SMALL (notebooks/colab.ipynb)
    notebook_repo: str | None = None  # HARNESS_REPO (the notebook's install cell reads it before harness exists)
    unknown: tuple[str, ...] = ()  # HARNESS_* names set but not known (misspelt?)


def parse_switch(name: str, text: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off`` → False (any case); anything else is an error."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise HarnessError(f"{name}={text!r}: expected {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}")


def parse_positive_int(name: str, text: str) -> int:
    """A whole number ≥ 1 in decimal digits."""
    if not re.fullmatch(r"[0-9]+", text.strip()) or int(text) < 1:
        raise HarnessError(f"{name}={text!r}: expected a positive integer (1, 2, …)")
    return int(text)


def parse_dir_or_off(name: str, text: str, default: Path) -> Path | None:
    """``off`` (or another false word) → None; ``on`` (a true word) → ``default``; anything else is a directory."""
    word = text.strip()
    if not word:
        raise HarnessError(f"{name}={text!r}: expected a directory, or off")
    if word.lower() in FALSE_WORDS:
        return None
    if word.lower() in TRUE_WORDS:
        return default
    return Path(word).expanduser()


# name → (Settings field, parser): README's "Settings (environment variables)" table describes each.
VARIABLES: dict[str, tuple[str, str]] = {
    "HARNESS_OFFLINE": ("offline", "switch"),
    "HARNESS_DATA_CACHE": ("data_cache", "dir"),
    "HARNESS_COMPILATION_CACHE": ("compilation_cache", "dir"),
    "HARNESS_CPU_DEVICES": ("cpu_devices", "positive"),
    "HARNESS_DISTRIBUTED": ("distributed", "switch"),
    "HARNESS_DISTRIBUTED_TIMEOUT": ("distributed_timeout", "positive"),
    "HARNESS_NOTEBOOK_SMALL": ("notebook_small", "switch"),  # read by notebooks/colab.ipynb (set by its test)
    "HARNESS_REPO": ("notebook_repo", "text"),  # what the notebook's install cell pip-installs
}


def cache_home(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``."""
    home = environ.get("HOME") or str(Path.home())
    return Path(environ.get("XDG_CACHE_HOME") or Path(home) / ".cache") / "harness"


@functools.lru_cache(maxsize=16)
def _parse(items: tuple[tuple[str, str], ...]) -> Settings:
    environ = dict(items)
    home = cache_home(environ)
    values: dict[str, Any] = {"data_cache": home / "data", "compilation_cache": home / "jax"}
    for name, (field, kind) in VARIABLES.items():
        text = environ.get(name, "")
        if not text.strip():
            continue
        if kind == "switch":
            values[field] = parse_switch(name, text)
        elif kind == "positive":
            values[field] = parse_positive_int(name, text)
        elif kind == "text":
            values[field] = text.strip()
        else:
            values[field] = parse_dir_or_off(name, text, values[field])
    unknown = tuple(sorted(k for k in environ if k.startswith("HARNESS_") and k not in VARIABLES))
    return Settings(**values, unknown=unknown)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``environ`` (default ``os.environ``): parsed once per distinct set of values, so reading
    them again is cheap and a changed variable (a test's ``monkeypatch.setenv``) is seen."""
    environ = os.environ if environ is None else environ
    relevant = (k for k in environ if k.startswith("HARNESS_") or k in ("XDG_CACHE_HOME", "HOME"))
    return _parse(tuple(sorted((k, environ[k]) for k in relevant)))


def dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a folder harness writes into (a file, under a file, not writable), else None.
    Creates nothing."""
    nearest = Path(path)
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        return "is a file" if nearest == Path(path) else f"cannot be made ({nearest} is a file)"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"cannot be written ({nearest} is not writable)"
    return None


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """``harness: warning: MESSAGE`` on stderr, once per process."""
    if message not in _warned:
        _warned.add(message)
        print(f"harness: warning: {message}", file=sys.stderr, flush=True)


def cache_unusable(name: str, path: Path, problem: str, without: str) -> None:
    """Warns once that the cache folder of variable ``name`` cannot be used and what harness does instead."""
    warn_once(f"{name}: {display_path(path)} {problem}; {without} (set {name} to a folder you can write, or off)")


def display_path(path: Path) -> str:
    """``path`` with the home directory shown as ``~``."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)
