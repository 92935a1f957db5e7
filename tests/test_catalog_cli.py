"""The catalogue of bad inputs: every one the ``harness`` command refuses, run through the real command line in
subprocesses, each answered with exactly one ``harness: error: …`` line naming the problem, exit status 2, no
traceback, and nothing written in the folders it was given (or in the data dirs and runs it read).

One table, :data:`CASES`: (id, argv, env, expected fragment of the error line). Paths in them are placeholders
filled per case (see :func:`_fill`); each case runs in its own empty folder holding one file, ``paper.txt``. The
cases run a few at a time (a process that starts JAX spends ~3 s of CPU); the issue-22 cases and the earlier ones
refused before JAX starts run by default (~40 s on 2 idle cores), the other earlier ones are ``slow``
(``-m slow``). ``JAX_PLATFORMS`` is removed from the cases' environment: they see what a user sees (libtpu's
start-up lines included, which are not ``harness: error`` lines)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_tiny_idx
from test_cli import BAD_IMPORTS

from harness import cli
from harness.data import idx

BLOCKED = "/sys/harness-catalog"  # a folder nobody can create: sysfs refuses even root
LETTERS = "a,b,c,d,e,f,g,h,i,j"
TINY_RUN = ["--config", "smoke", "--config.data_dir={data}", "--config.batch_size=64", "--config.report=no"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``harness ARGV`` (with ``env`` added) must end in one error line holding ``fragment``."""

    id: str
    argv: tuple[str, ...]
    fragment: str
    env: tuple[tuple[str, str], ...] = ()
    slow: bool = False


def case(id: str, argv: list[str], fragment: str, env: dict | None = None, slow: bool = False) -> Case:
    return Case(id, tuple(argv), fragment, tuple((env or {}).items()), slow)


def train(*extra: str) -> list[str]:
    """``harness train --config smoke --workdir {case}/w`` plus ``extra``."""
    return ["train", "--config", "smoke", "--workdir", "{case}/w", *extra]


def imports(source: str, *how: str) -> list[str]:
    return ["data", "import", source, *how, "--data-dir", "{case}/tfds"]


CASES = [
    # ---- issue 22 -------------------------------------------------------------------------------------------
    # 2: an unusable data dir (a file, under a file, from TFDS_DATA_DIR, not writable)
    case("data-dir-is-a-file", train("--config.data_dir={file}"), "config.data_dir: data dir {file} is a file"),
    case("data-dir-under-a-file", train("--config.data_dir={file}/tfds"), "cannot be made: {file} is a file"),
    case("tfds-data-dir-is-a-file", train(), "data dir {file} (TFDS_DATA_DIR) is a file", {"TFDS_DATA_DIR": "{file}"}),
    case(
        "explore-data-dir-is-a-file",
        ["explore", "--dataset", "fashion_mnist", "--data-dir", "{file}", "--out", "{case}/x"],
        "data dir {file} is a file",
    ),
    case(
        "data-dir-not-writable",
        ["data", "import", "{idx}", "--dataset", "mnist", "--data-dir", BLOCKED],
        "cannot write",
    ),
    # 3: an unusable output folder
    case(
        "explore-out-is-a-file",
        ["explore", "--dataset", "fashion_mnist", "--data-dir", "{data}", "--out", "{file}"],
        "--out {file} is a file; name a folder for the pictures",
    ),
    case("report-out-is-a-file", ["report", "{trained}", "--out", "{file}"], "--out {file} is a file"),
    case("report-out-not-writable", ["report", "{trained}", "--out", f"{BLOCKED}/report"], "cannot write"),
    # 4: init_from that names no run, or the run itself
    case("init-from-nothing", train(*TINY_RUN[2:], "--config.init_from={case}/none"), "no checkpoints there"),
    case("init-from-itself", train(*TINY_RUN[2:], "--config.init_from={case}/w"), "this run's own workdir"),
    # 7: accepted silently before
    case("data-info-data-dir-is-a-file", ["data", "info", "--data-dir", "{file}"], "data dir {file} is a file"),
    case(
        "mlp-hidden-of-a-fixed-model",
        train("--config.mlp_hidden=512"),
        "config.mlp_hidden=(512,): the mlp_tiny model does not read it (only mlp does)",
    ),
    case("cnn-dense-of-an-mlp", train("--config.model=mlp", "--config.cnn_dense=64"), "the mlp model does not read"),
    # 8: a model too wide, refused before anything is allocated, naming the width
    case(
        "width-too-large",
        train(*TINY_RUN[2:], "--config.width=1000000"),
        "config.width=1000000: the model's train state and gradients alone need",
    ),
    # 11: messages that pointed at the wrong fix or the wrong name
    case(
        "stray-label",
        imports("{stray}", "--as", "letters", "--classes", LETTERS),
        "labels 0..12 make 13 classes (label 12: 1 in train); harness's models have 10 outputs",
    ),
    case(
        "bench-num-devices-not-dividing",
        ["bench", "--models", "mlp_tiny", "--num-devices", "5", "--no-ledger"],
        "--batch-sizes 128: must be divisible by the device count (5)",
    ),
    case(
        "bench-too-many-devices",
        ["bench", "--models", "mlp_tiny", "--num-devices", "64", "--no-ledger"],
        "--num-devices 64: only",
    ),
    case(
        "bench-micro-batches",
        ["bench", "--models", "mlp_tiny", "--micro-batches", "3", "--no-ledger"],
        "--micro-batches 3: must be 0 (auto) or divide the per-device batch",
    ),
    # ---- earlier: the ones refused before JAX starts run by default, the others (~3 s each) are slow ------
    case("config-file-missing", ["train", "--config", "nope.py"], "config file 'nope.py' does not exist", slow=True),
    case("unknown-key", train("--config.batch_sise=64"), "unknown config key 'batch_sise'", slow=True),
    case("not-an-override", train("--lr=3"), "unrecognized argument '--lr=3'", slow=True),
    case("batch-not-divisible", train("--config.batch_size=100"), "divisible by the device count", slow=True),
    case("no-trained-run", ["eval", "--workdir", "{case}/none"], "no trained run here", slow=True),
    case("predict-needs-what", ["predict", "--workdir", "w"], "one of the arguments --index --image is required"),
    case(
        "predict-missing-image",
        ["predict", "--workdir", "w", "--image", "missing.png"],
        "missing.png: no such file",
        slow=True,
    ),
    case("unknown-command", ["frobnicate"], "invalid choice"),
    case("empty-workdir", ["train", "--workdir", " "], ": empty; name a folder"),
    case("truncated-import", imports("{short}", "--dataset", "mnist"), "t10k-images-idx3-ubyte", slow=True),
    case("no-data", train("--config.dataset=mnist"), "no mnist data", {"TFDS_DATA_DIR": "{case}/empty"}, slow=True),
    case("foreign-workdir", ["train", "--config", "smoke", "--workdir", "{case}"], "not a harness workdir", slow=True),
    case(
        "changed-trajectory",
        ["train", *TINY_RUN, "--workdir", "{trained}", "--config.seed=1"],
        "seed (0 → 1)",
        slow=True,
    ),
    case("bad-variable", ["data", "info"], "HARNESS_CPU_DEVICES='many'", {"HARNESS_CPU_DEVICES": "many"}),
    # ---- earlier: more of them (slow) -----------------------------------------------------------------------
    *[
        case(f"config-{key}-{value}", train(f"--config.{key}={value}"), fragment, slow=True)
        for key, value, fragment in [
            ("dataset", "cifar10", "allowed: mnist, fashion_mnist"),
            ("model", "vit", "allowed: mlp, cnn"),
            ("batch_size", "0", "config.batch_size=0"),
            ("learning_rate", "-0.1", "config.learning_rate=-0.1"),
            ("num_epochs", "0", "config.num_epochs=0"),
            ("parallel", "xmap", "allowed: pmap, jit"),
            ("dtype", "int8", "allowed: float32, bfloat16"),
            ("optimizer", "rmsprop", "allowed: sgd, adam, adamw"),
            ("num_devices", "64", "config.num_devices=64: only"),
            ("seed", "-1", "config.seed=-1: must be an integer in [0, 2**32)"),
            ("num_epochs", "two", "config.num_epochs='two': expected an integer"),
        ]
    ],
    case("config-not-python", ["train", "--config", "/etc/passwd"], "failed: SyntaxError: ", slow=True),
    case(
        "predict-index-and-image",
        ["predict", "--workdir", "w", "--index", "0", "--image", "a.png"],
        "not allowed with argument",
    ),
    case(
        "predict-invert-index",
        ["predict", "--workdir", "w", "--index", "0", "--invert", "yes"],
        "--invert applies to --image",
        slow=True,
    ),
    case("predict-invert-maybe", ["predict", "--workdir", "w", "--image", "a.png", "--invert", "maybe"], "'maybe'"),
    case(
        "data-info-unknown",
        ["data", "info", "--dataset", "cifar10", "--data-dir", "{data}"],
        "unknown dataset 'cifar10'; allowed: mnist, fashion_mnist, kmnist",
        slow=True,
    ),
    case(
        "explore-unknown",
        ["explore", "--dataset", "leters", "--data-dir", "{data}", "--out", "{case}/x"],
        "allowed: mnist, fashion_mnist, kmnist (shipped)",
        slow=True,
    ),
    case("checkpoint-missing", ["checkpoints", "{trained}", "--inspect", "5"], "no such checkpoint", slow=True),
    case("empty-split-import", imports("{empty}", "--dataset", "mnist"), "announces 0 images", slow=True),
    *[
        case(f"empty-workdir-{argv[0]}-{i}", argv, ": empty; name a folder", slow=argv[0] not in ("checkpoints",))
        for i, argv in enumerate(
            [
                ["train", "--workdir", ""],
                ["eval", "--workdir", ""],
                ["predict", "--workdir", " ", "--index", "0"],
                ["checkpoints", ""],
                ["report", "\t"],
            ]
        )
    ],
    *[
        case(f"import-{i}", imports("{idx}", *how), fragment, slow=True)
        for i, (how, fragment) in enumerate(BAD_IMPORTS)
    ],
    case("import-twice", ["data", "import", "{idx}", "--dataset", "mnist", "--data-dir", "{data}"], "already prepared"),
]


# ---- the shared inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_idx_dir, tiny_data_dir) -> dict[str, Path]:
    """The placeholders' folders shared by the cases: the tiny data, IDX folders with a flaw, a trained run."""
    from harness import config as config_lib
    from harness import train as train_lib

    root = tmp_path_factory.mktemp("catalog")
    stray = write_tiny_idx(root / "stray")
    labels = stray["train"][1].copy()
    labels[5] = 12  # one stray label in a 10-class set
    (root / "stray" / "train-labels-idx1-ubyte.gz").unlink()
    (root / "stray" / "train-labels-idx1-ubyte").write_bytes(idx.encode_labels(labels))
    write_tiny_idx(root / "short", num_train=20, num_test=5)
    images = root / "short" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    write_tiny_idx(root / "empty", num_train=20, num_test=0)
    trained = root / "trained"
    config = config_lib.load("smoke", [f"data_dir={tiny_data_dir}", "batch_size=64", "report=no"])
    train_lib.train_and_evaluate(config, trained, print_fn=lambda _: None)
    return {
        "data": Path(tiny_data_dir),
        "idx": tiny_idx_dir,
        "stray": root / "stray",
        "short": root / "short",
        "empty": root / "empty",
        "trained": trained,
        "root": root,
    }


def _fill(text: str, inputs: dict[str, Path], folder: Path) -> str:
    return text.format(**inputs, case=folder, file=folder / "paper.txt")


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@dataclasses.dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    before: dict
    after: dict
    seconds: float = 0.0


def _environment(extra: dict[str, str], inputs: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # what a user has
    env.update(HARNESS_OFFLINE="1", TFDS_DATA_DIR=str(inputs["root"] / "tfds-default"))
    return {**env, **extra}


def _run(case: Case, inputs: dict[str, Path]) -> Result:
    folder = inputs["root"] / "cases" / case.id
    folder.mkdir(parents=True)
    (folder / "paper.txt").write_text("keep me")
    before = _listing(folder)
    env = _environment({k: _fill(v, inputs, folder) for k, v in case.env}, inputs)
    argv = [_fill(a, inputs, folder) for a in case.argv]
    start = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, env=env, cwd=folder, timeout=300
    )
    return Result(p.returncode, p.stdout, p.stderr, before, _listing(folder), time.perf_counter() - start)


@dataclasses.dataclass
class Batch:
    """The results of a batch of cases, and the shared folders any of them changed (it should be none)."""

    results: dict[str, Result]
    changed: list[str]


def _run_all(cases: list[Case], inputs: dict[str, Path]) -> Batch:
    shared = {name: _listing(inputs[name]) for name in ("data", "idx", "stray", "short", "empty", "trained")}
    with concurrent.futures.ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        results = dict(zip([c.id for c in cases], pool.map(lambda c: _run(c, inputs), cases), strict=True))
    changed = [name for name, listing in shared.items() if _listing(inputs[name]) != listing]
    changed += [str(p) for p in (Path(BLOCKED), inputs["root"] / "tfds-default") if p.exists()]
    return Batch(results, changed)


@pytest.fixture(scope="module")
def fast_results(inputs) -> Batch:
    return _run_all([c for c in CASES if not c.slow], inputs)


@pytest.fixture(scope="module")
def slow_results(inputs) -> Batch:
    return _run_all([c for c in CASES if c.slow], inputs)


def _check(case: Case, result: Result, inputs: dict[str, Path]) -> None:
    folder = inputs["root"] / "cases" / case.id
    assert result.rc == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("harness: error")]
    assert len(errors) == 1 and errors[0].startswith("harness: error: "), result.stderr
    assert _fill(case.fragment, inputs, folder) in errors[0]
    assert result.after == result.before, "it wrote into the folder it was given"


def test_the_catalogue_has_unique_ids():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [c for c in CASES if not c.slow], ids=lambda c: c.id)
def test_bad_input_is_one_line(case, fast_results, inputs):
    _check(case, fast_results.results[case.id], inputs)


def test_bad_input_changes_nothing_it_read(fast_results):
    """The data dirs, IDX folders and the trained run the cases read are as they were; no default data dir and
    no unwritable folder was made."""
    assert fast_results.changed == []


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.slow], ids=lambda c: c.id)
def test_more_bad_input_is_one_line(case, slow_results, inputs):
    _check(case, slow_results.results[case.id], inputs)


@pytest.mark.slow
def test_more_bad_input_changes_nothing_it_read(slow_results):
    assert slow_results.changed == []


# ---- what is not an error: a closed pipe, an unusable cache, the help ---------------------------------------


def test_a_reader_that_goes_away_ends_quietly(inputs):
    """Issue 22 item 5: ``harness checkpoints W --inspect STEP | head -5``: the reader closes the pipe; harness
    stops quietly like any Unix tool (exit 141 = 128 + SIGPIPE), no BrokenPipeError traceback."""
    argv = [sys.executable, "-m", "harness.cli", "checkpoints", str(inputs["trained"]), "--inspect", "8"]
    env = _environment({}, inputs)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=inputs["root"])
    p.stdout.close()  # before harness writes its first line
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == cli.EXIT_PIPE and "Traceback" not in err and "harness: error" not in err, err


def test_an_unusable_cache_is_one_warning_and_the_run_goes_on(inputs, tmp_path):
    """Issue 22 item 7: ``HARNESS_COMPILATION_CACHE`` or ``HARNESS_DATA_CACHE`` naming a file: one warning line
    each, the run trains without that cache, the file is left as it was."""
    blocker = tmp_path / "paper.txt"
    blocker.write_text("keep me")
    argv = ["train", *[_fill(a, inputs, tmp_path) for a in TINY_RUN], "--workdir", str(tmp_path / "w")]
    env = _environment({"HARNESS_COMPILATION_CACHE": str(blocker), "HARNESS_DATA_CACHE": str(blocker)}, inputs)
    p = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr and "final test_accuracy" in p.stdout, p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.startswith("harness: warning: ")]
    assert len(warnings) == 2, p.stderr
    assert warnings[0].startswith(f"harness: warning: HARNESS_COMPILATION_CACHE: {blocker} is a file; compiling")
    assert warnings[1].startswith(f"harness: warning: HARNESS_DATA_CACHE: {blocker} is a file; decoding")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--help"], "--config.KEY=VALUE"),
        (["bench", "--help"], "compute dtypes, comma-separated: float32, bfloat16"),
        (["predict", "--help"], "position in the test IDX files"),
    ],
)
def test_the_help_says_it(argv, fragment, capsys):
    """Issue 22 item 11 (and 10): `train --help` tells how to override config keys; `bench --dtypes` has help;
    `predict --index` says which order it counts in."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0 and fragment in " ".join(capsys.readouterr().out.split())


def test_readme_commands_that_change_a_run_name_their_own_workdir():
    """Issue 22 item 12: a README `harness train` line that changes what a config trains (a trajectory key: dataset,
    batch size, …) names its own --workdir; the default runs/CONFIG would hold the plain config's run, and harness
    refuses to resume that with other settings."""
    import re
    import shlex

    from helpers import REPO

    from harness.train import TRAJECTORY_KEYS

    text = (REPO / "README.md").read_text()
    flagged = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "harness train" not in line:
                continue
            words = shlex.split(line.split("#")[0][line.index("harness train") :].rstrip("'"))
            keys = {w.split("=")[0].removeprefix("--config.") for w in words if w.startswith("--config.")}
            if keys & set(TRAJECTORY_KEYS) and "--workdir" not in words:
                flagged.append(line.strip())
    assert flagged == []


def test_a_refused_run_leaves_no_orbax_thread_behind(tmp_path, monkeypatch, caplog):
    """Issue 22 item 4: Orbax's ``close()`` did not wait for the clean-up of temporary folders it starts when a
    checkpoint dir opens; a run refused at once (its new workdir then removed) got that thread's traceback.
    The clean-up is slowed here so that it always runs after the workdir is gone unless ``close`` waits."""
    from orbax.checkpoint import checkpoint_manager

    from harness.checkpoint import Checkpoints

    async def slow_cleanup(directory, **kwargs):
        await asyncio.sleep(0.5)
        return os.listdir(directory)

    monkeypatch.setattr(checkpoint_manager.temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    workdir = tmp_path / "run"
    Checkpoints(workdir).close()
    shutil.rmtree(workdir)
    time.sleep(1.0)
    assert not [r for r in caplog.records if "raised an exception" in r.getMessage()]
