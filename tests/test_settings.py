"""harness.settings: the three parsers, every HARNESS_* variable (a bad one is one line from the CLI, exit 2), the
config key that wins over its variable, the late HARNESS_CPU_DEVICES warning, the compilation-cache line, and
that importing harness changes no process-wide state."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from harness import cli, runtime, settings, train
from harness import config as config_lib
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
BAD = {"switch": "maybe", "positive": "0"}  # a bad value of each kind ("dir" and "text" take any non-empty text)


def one_line(error: HarnessError) -> str:
    assert "\n" not in str(error)
    return str(error)


@pytest.mark.parametrize("word", ["1", "true", "YES", " on "])
def test_switch_true_words(word):
    assert settings.parse_switch("HARNESS_X", word) is True


@pytest.mark.parametrize("word", ["0", "False", "no", "OFF"])
def test_switch_false_words(word):
    assert settings.parse_switch("HARNESS_X", word) is False


@pytest.mark.parametrize("text", ["maybe", "2", "y", "enable"])
def test_switch_refuses_anything_else_naming_the_variable_and_the_words(text):
    with pytest.raises(HarnessError) as e:
        settings.parse_switch("HARNESS_X", text)
    assert one_line(e.value) == f"HARNESS_X={text!r}: expected 1/true/yes/on or 0/false/no/off"


def test_positive_int():
    assert settings.parse_positive_int("HARNESS_N", "12") == 12
    assert settings.parse_positive_int("HARNESS_N", " 3 ") == 3
    for text in ("0", "-1", "2.5", "many", "³", "1e3"):
        with pytest.raises(HarnessError, match=r"^HARNESS_N=.*: expected a positive integer") as e:
            settings.parse_positive_int("HARNESS_N", text)
        one_line(e.value)


def test_dir_or_off(tmp_path):
    default = tmp_path / "default"
    for word in ("off", "0", "false", "No"):
        assert settings.parse_dir_or_off("HARNESS_D", word, default) is None
    for word in ("on", "1", "true"):
        assert settings.parse_dir_or_off("HARNESS_D", word, default) == default
    assert settings.parse_dir_or_off("HARNESS_D", str(tmp_path / "c"), default) == tmp_path / "c"
    assert settings.parse_dir_or_off("HARNESS_D", "~/c", default) == Path.home() / "c"


def test_load_defaults_and_every_variable(tmp_path):
    base = {"HOME": str(tmp_path), "PATH": "/bin"}
    s = settings.load(base)
    assert s == settings.Settings(
        data_cache=tmp_path / ".cache/harness/data", compilation_cache=tmp_path / ".cache/harness/jax"
    )
    assert settings.load({**base, "XDG_CACHE_HOME": "/xdg"}).data_cache == Path("/xdg/harness/data")
    env = {
        **base,
        "HARNESS_OFFLINE": "yes",
        "HARNESS_DATA_CACHE": "off",
        "HARNESS_COMPILATION_CACHE": str(tmp_path / "jax"),
        "HARNESS_CPU_DEVICES": "4",
        "HARNESS_DISTRIBUTED": "false",
        "HARNESS_DISTRIBUTED_TIMEOUT": "60",
        "HARNESS_NOTEBOOK_SMALL": "1",
        "HARNESS_REPO": "dist/harness.whl",
        "HARNESS_OFLINE": "1",
    }
    assert settings.load(env) == settings.Settings(
        offline=True,
        data_cache=None,
        compilation_cache=tmp_path / "jax",
        cpu_devices=4,
        distributed=False,
        distributed_timeout=60,
        notebook_small=True,
        notebook_repo="dist/harness.whl",
        unknown=("HARNESS_OFLINE",),
    )
    assert {f for f, _ in settings.VARIABLES.values()} == {f.name for f in dataclasses.fields(s)} - {"unknown"}
    assert settings.load({**base, "HARNESS_CPU_DEVICES": "  "}).cpu_devices is None  # empty = unset


def test_load_sees_a_changed_environment(monkeypatch):
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    assert settings.load().offline is True
    monkeypatch.setenv("HARNESS_OFFLINE", "0")
    assert settings.load().offline is False
    assert settings.load() is settings.load()  # parsed once per distinct set of values


@pytest.mark.parametrize("name", [n for n, (_, kind) in settings.VARIABLES.items() if kind in BAD])
def test_every_bad_variable_is_one_line_from_the_cli(name, monkeypatch, capsys, tmp_path):
    kind = settings.VARIABLES[name][1]
    monkeypatch.setenv(name, BAD[kind])
    assert cli.main(["eval", "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"harness: error: {name}='{BAD[kind]}': expected "), err
    assert list(tmp_path.iterdir()) == []


def test_unknown_variable_is_a_warning(monkeypatch, capsys, tiny_data_dir):
    monkeypatch.setenv("HARNESS_OFLINE", "1")
    assert cli.main(["data", "info", "--dataset", "mnist", "--data-dir", tiny_data_dir]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("harness: warning: HARNESS_OFLINE is not a harness variable (ignored); known: ")


def test_readme_table_lists_every_variable():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Settings (environment variables)", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(HARNESS_[A-Z_]+)` \|", section, re.M)
    assert sorted(listed) == sorted(settings.VARIABLES)


def test_only_settings_reads_harness_variables():
    reads = re.compile(r"""(environ\.get|getenv|environ\[)\(?\s*["']HARNESS_""")
    found = [p for p in (ROOT / "harness").rglob("*.py") if p.name != "settings.py" and reads.search(p.read_text())]
    assert found == []


# ---- config.distributed against HARNESS_DISTRIBUTED ---------------------------------------------------------


@pytest.fixture
def fake_initialize(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "HARNESS_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_config_distributed_is_unset_by_default_and_parses_as_a_bool():
    assert config_lib.load("smoke").distributed is None
    assert config_lib.load("smoke", ["distributed=True"]).distributed is True
    assert config_lib.load("smoke", ["distributed=false"]).distributed is False


def test_the_variable_decides_only_when_the_config_leaves_distributed_unset(fake_initialize, monkeypatch):
    assert runtime.initialize_distributed(None) is False and fake_initialize == []
    monkeypatch.setenv("HARNESS_DISTRIBUTED", "1")
    monkeypatch.setenv("HARNESS_DISTRIBUTED_TIMEOUT", "7")
    assert runtime.initialize_distributed(False) is False and fake_initialize == []  # the config wins
    assert runtime.initialize_distributed(None) is True
    assert fake_initialize == [{"initialization_timeout": 7}]
    monkeypatch.setenv("HARNESS_DISTRIBUTED", "0")
    assert runtime.initialize_distributed(True) is True and len(fake_initialize) == 2  # the config wins


# ---- HARNESS_CPU_DEVICES ------------------------------------------------------------------------------------


def test_cpu_devices_set_after_jax_started_warns(monkeypatch, capsys):
    started = len(jax.devices("cpu"))  # this process's backends are up (8 fake devices, see conftest)
    monkeypatch.setenv("XLA_FLAGS", "")
    cli._cpu_devices(3)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"harness: warning: HARNESS_CPU_DEVICES=3 has no effect: JAX has already started in this process with "
        f"{started} CPU device(s); set it before the first JAX call (in a notebook: restart the kernel and set it "
        "first)"
    ]
    cli._cpu_devices(started)  # already in effect: nothing to say
    assert capsys.readouterr().err == "" and os.environ["XLA_FLAGS"] == ""


def test_cpu_devices_before_jax_starts_sets_xla_flags_or_warns_about_a_conflict(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_jax_cpu_device_count", lambda: None)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    cli._cpu_devices(3)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    cli._cpu_devices(3)
    assert capsys.readouterr().err.splitlines() == [
        "harness: warning: HARNESS_CPU_DEVICES=3 has no effect: XLA_FLAGS already sets "
        "--xla_force_host_platform_device_count=8"
    ]


# ---- the compilation cache line -----------------------------------------------------------------------------


@pytest.fixture
def new_cache_dir(monkeypatch, tmp_path):
    """A compilation cache dir this process has not used (JAX's own setting restored afterwards)."""
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("HARNESS_COMPILATION_CACHE", str(tmp_path / "jax-cache"))
    yield tmp_path / "jax-cache"
    jax.config.update("jax_compilation_cache_dir", before)


def test_training_says_once_per_process_that_the_compilation_cache_is_on(tiny_config, tmp_path, new_cache_dir):
    tiny_config.update(num_epochs=1)
    lines = []
    train.train_and_evaluate(tiny_config, tmp_path / "a", print_fn=lines.append)
    assert lines[0] == f"compilation cache: {new_cache_dir} (HARNESS_COMPILATION_CACHE=off to disable)"
    assert sum(line.startswith("compilation cache") for line in lines) == 1
    lines.clear()
    train.train_and_evaluate(tiny_config, tmp_path / "a", print_fn=lines.append)  # already trained: no compiling
    assert lines and not any(line.startswith("compilation cache") for line in lines)


def test_compilation_cache_off_says_nothing(monkeypatch):
    monkeypatch.setenv("HARNESS_COMPILATION_CACHE", "off")
    lines = []
    assert runtime.enable_compilation_cache(lines.append) is None and lines == []


# ---- importing harness changes nothing process-wide ---------------------------------------------------------

SNAPSHOT = """
import json, os, sys
import jax, matplotlib
def snapshot():
    rc = {k: repr(v) for k, v in dict.items(matplotlib.rcParams)}
    return {"backend": repr(matplotlib.rcParams._get_backend_or_none()), "rc": rc,
            "jax": {k: repr(v) for k, v in jax.config.values.items()}, "env": dict(os.environ)}
before = snapshot()
import harness.cli, harness.report, harness.explore, harness.pictures, harness.train, harness.bench, harness.ledger
import harness.evaluate, harness.settings, harness.parallel, harness.runtime, harness.data.datasets, harness.colab
after = snapshot()
print(json.dumps({k: {n: [before[k].get(n), after[k].get(n)] for n in set(before[k]) | set(after[k])
                      if before[k].get(n) != after[k].get(n)} if isinstance(before[k], dict) else
                  [before[k], after[k]] for k in before if before[k] != after[k]}))
"""


def test_importing_harness_changes_no_process_wide_state():
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    p = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {}
