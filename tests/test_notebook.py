"""notebooks/colab.ipynb: committed without outputs, its install cell's decisions, and a real run on a CPU kernel
(``HARNESS_NOTEBOOK_SMALL=1``: the tiny CNN on the real Fashion-MNIST)."""

import ast
import base64
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from helpers import REPO, fresh_venv, pip_env

from harness.data import datasets

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
CODE_CELLS = ["install", "parameters", "devices", "drive", "explore", "train", "interrupt", "resume", "bench"]
DEBIAN = datasets.DEBIAN_DIRS["fashion_mnist"]
NO_DEBIAN_FILES = bool(datasets.idx.missing_files(DEBIAN)) if DEBIAN.is_dir() else True


def read_notebook() -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def code_cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def test_committed_notebook_has_no_outputs_and_no_execution_counts():
    nb = read_notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.id for c in code] == CODE_CELLS
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id} has outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {cell.id} has an execution count"
        assert "execution" not in cell.metadata, f"cell {cell.id} carries execution timestamps"
    assert nb.metadata.kernelspec.name == "python3"


# ---- the install cell, executed in this process with pip, versions and devices faked ------------------------


def run_install_cell(monkeypatch, versions: dict, upgrades: dict, env: dict | None = None, gpu: bool = False):
    """Runs the install cell. ``versions``: fake installed versions (None = absent); each pip call applies
    ``upgrades[its first argument]``. Returns (pip argument lists, the exception raised or None)."""
    fake, calls = dict(versions), []
    real_version, real_find_spec = importlib.metadata.version, importlib.util.find_spec

    def version(name):
        if name not in fake:
            return real_version(name)
        if fake[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return fake[name]

    def check_call(cmd):
        assert cmd[:5] == [sys.executable, "-m", "pip", "install", "-q"], cmd
        calls.append(cmd[5:])
        fake.update(upgrades[cmd[5]])

    def find_spec(name, *args):
        return None if name == "harness" and fake.get("harness", "") is None else real_find_spec(name, *args)

    for name in ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR", "HARNESS_REPO"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(subprocess, "check_call", check_call)
    monkeypatch.setattr(glob, "glob", lambda pattern: ["/dev/nvidia0"] if gpu and "nvidia" in pattern else [])
    try:
        exec(compile(code_cell(read_notebook(), "install").source, "install-cell", "exec"), {})
    except Exception as e:
        return calls, e
    return calls, None


def assert_restart_requested(error, capsys, changed: str):
    assert type(error).__name__ == "RestartRuntime", error
    assert str(error) == "restart the runtime (Runtime → Restart session) and run all cells again"
    assert error._render_traceback_() == [str(error)]  # IPython shows only the message, no traceback
    assert f"upgraded {changed}" in capsys.readouterr().out


def test_install_cell_on_tpu_upgrades_an_old_jax_and_asks_for_a_restart(monkeypatch, capsys):
    floor = next(r for r in importlib.metadata.requires("harness") if r.startswith("jax>=")).split(">=")[1]
    new = {"jax": floor, "jaxlib": floor}
    calls, error = run_install_cell(
        monkeypatch,
        {"jax": "0.7.2", "jaxlib": "0.7.2"},
        {"-U": new},
        env={"TPU_ACCELERATOR_TYPE": "v5litepod-1"},
    )
    assert calls == [["-U", f"jax[tpu]>={floor}"]]  # the floor comes from harness' own metadata
    assert_restart_requested(error, capsys, f"jax 0.7.2 → {floor}, jaxlib 0.7.2 → {floor}")


def test_install_cell_on_a_fresh_gpu_runtime_installs_harness_then_cuda_jax(monkeypatch, capsys):
    calls, error = run_install_cell(
        monkeypatch,
        {"harness": None, "jax": "0.7.2", "jaxlib": "0.7.2"},
        {"git+https://github.com/harness-dev/harness": {"harness": "0.1.0", "jax": "0.10.2"}, "-U": {}},
        gpu=True,
    )
    assert calls == [["git+https://github.com/harness-dev/harness"], ["-U", "jax[cuda12]>=0.10.2"]]
    assert_restart_requested(error, capsys, "jax 0.7.2 → 0.10.2")


@pytest.mark.parametrize(("env", "kind"), [({}, "cpu"), ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, "tpu")])
def test_install_cell_with_everything_installed_only_prints_versions(monkeypatch, capsys, env, kind):
    calls, error = run_install_cell(monkeypatch, {}, {}, env=env)
    assert (calls, error) == ([], None)
    out = capsys.readouterr().out
    assert out.startswith(f"{kind} runtime: python ") and f"jax {importlib.metadata.version('jax')}" in out


# ---- the whole notebook in a kernel --------------------------------------------------------------------------


def stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def pngs(cell) -> list[bytes]:
    return [base64.b64decode(o.data["image/png"]) for o in cell.outputs if "image/png" in o.get("data", {})]


def repository_ledger_digest() -> str:
    files = sorted((REPO / "benchmarks" / "results").glob("*.jsonl"))
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.mark.realdata
@pytest.mark.skipif(NO_DEBIAN_FILES, reason=f"Debian's dataset-fashion-mnist files are not in {DEBIAN}")
def test_notebook_runs_on_cpu(tmp_path, monkeypatch, harness_wheel):
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    # A kernel in a fresh venv without harness: the install cell installs the wheel the way it installs
    # HARNESS_REPO on Colab (plain pip install, not editable); the venv sees this venv's other packages.
    python = fresh_venv(tmp_path / "venv")
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = tmp_path / "jupyter" / "kernels" / "harness-test"
    write_kernel_spec(kernel, overrides={"display_name": "harness test", "argv": argv})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name, value in pip_env({"HARNESS_REPO": str(harness_wheel)}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARNESS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("HARNESS_OFFLINE", "1")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One CPU device, as on a Colab CPU runtime (conftest gives this process 8).
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)
    work = tmp_path / "cwd"
    work.mkdir()
    ledger_before = repository_ledger_digest()

    nb = read_notebook()
    which = "import sys, harness; print(sys.executable); print(harness.__file__)"
    nb.cells.append(nbformat.v4.new_code_cell(which, id="which-python"))
    client = NotebookClient(nb, timeout=300, kernel_name="harness-test", resources={"metadata": {"path": str(work)}})
    client.execute()
    cell = {c.id: c for c in nb.cells if c.cell_type == "code"}
    errors = [o for c in cell.values() for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    executable, module = stdout(cell["which-python"]).split()
    assert executable == str(python) and module.startswith(str(tmp_path / "venv")), (executable, module)
    installed = stdout(cell["install"])
    assert installed.startswith(f"pip install {harness_wheel}\n") and "\ncpu runtime: python " in installed
    assert "backend cpu, 1 device(s):" in stdout(cell["devices"])
    workdir = work / "runs" / "fashion_mnist_cnn-small"
    assert stdout(cell["drive"]).strip() == f"workdir: {workdir.resolve()}"

    explore = stdout(cell["explore"])
    assert "dataset-fashion-mnist" in explore and "fashion_mnist train: 60000 examples" in explore
    assert len(pngs(cell["explore"])) == 4 and all(p.startswith(b"\x89PNG") for p in pngs(cell["explore"]))

    trained = stdout(cell["train"])
    accuracy = float(re.search(r"^final test_accuracy (\d\.\d+) .* on 10000 test images", trained, re.M).group(1))
    assert accuracy > 0.6, trained
    assert f"test accuracy {accuracy:.4f} after 469 steps" in trained
    assert len(pngs(cell["train"])) == 1  # the report's confusion matrix
    assert (workdir / "checkpoints").is_dir()

    interrupted = stdout(cell["interrupt"])
    summary = ast.literal_eval(re.search(r"^summary: (\{.*\})$", interrupted, re.M).group(1))
    assert summary["stopped"] == "SIGINT" and 0 < summary["step"] < 2 * 469, interrupted
    assert f"stopped by SIGINT at step {summary['step']}; checkpoint saved" in interrupted
    assert "final test_accuracy" not in interrupted

    resumed = stdout(cell["resume"])
    step = int(
        re.search(r"^resumed from step ([\d ]+) \((?:end of )?epoch [12] of 2", resumed, re.M).group(1).replace(" ", "")
    )
    assert step == summary["step"] > 0
    assert "resumed run finished: step 938, test accuracy " in resumed
    if step < 469:  # stopped in epoch 1 (the usual case): that epoch, resumed, is the main run's, bit for bit
        assert re.search(rf"^epoch 1/2: .*test_accuracy {accuracy:.4f}", resumed, re.M), resumed

    bench = stdout(cell["bench"])
    assert "ledger: appended to runs/notebook/bench/cpu.jsonl" in bench
    rows = [json.loads(line) for line in (work / "runs/notebook/bench/cpu.jsonl").read_text().splitlines()]
    assert [r["point"]["model"] for r in rows] == ["mlp_tiny"]
    table = [o.data["text/markdown"] for o in cell["bench"].outputs if "text/markdown" in o.get("data", {})]
    assert len(table) == 1
    body = [line for line in table[0].splitlines() if line.startswith("| ") and "mlp_tiny" in line]
    assert len(body) == 1 and "| jax | mlp_tiny |" in body[0]
    assert repository_ledger_digest() == ledger_before  # nothing went into benchmarks/results


# ---- what the notebook runs on a TPU runtime, compiled for Colab's TPUs through harness compile's path --------


def _notebook_parameters(small: bool = False) -> dict:
    """CONFIG, OVERRIDES, DEMO_EPOCHS and BENCH_ARGS of the parameters cell, as a TPU runtime sets them."""
    namespace = {"settings": type("S", (), {"load": staticmethod(lambda: type("E", (), {"notebook_small": small}))})}
    source = code_cell(read_notebook(), "parameters").source.replace("from harness import settings\n", "")
    exec(compile(ast.parse(source), "parameters", "exec"), namespace)  # the repository's own notebook cell
    return {k: namespace[k] for k in ("CONFIG", "OVERRIDES", "DEMO_EPOCHS", "BENCH_ARGS")}


LIBTPU = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (harness[tpu])")


@LIBTPU
@pytest.mark.parametrize(
    "accelerator", ["v2-8", "v5e-1", pytest.param("v6e-1", marks=pytest.mark.slow)]
)  # each compile of the CNN for one chip takes ~40 s of CPU: Colab's free TPU (v5e-1) by default, v6e-1 with -m slow
def test_the_notebooks_training_compiles_for_colabs_tpus(accelerator):
    """The former Colab TPU (a v2-8: pmap over its 8 cores) and today's (v5e-1, v6e-1): the notebook's train cell
    (and its stop-and-resume demo, the same program) compiles and fits."""
    from harness import aot, topology
    from harness import config as config_lib

    params = _notebook_parameters()
    tpu = topology.describe(accelerator)
    config = config_lib.load(params["CONFIG"], [*params["OVERRIDES"], f"num_epochs={params['DEMO_EPOCHS']}"])
    figures = aot.predict(config, tpu)
    assert figures["fits"] and figures["plan"]["num_devices"] == len(tpu.devices)
    assert figures["plan"]["strategy"] == "pmap"


@LIBTPU
def test_the_notebooks_benchmark_compiles_for_a_v2_8():
    """The bench cell's models (`harness bench` at its default point) on the 8 cores of a v2-8."""
    from harness import aot, bench, topology

    params = _notebook_parameters()
    tpu = topology.describe("v2-8")
    models = params["BENCH_ARGS"][params["BENCH_ARGS"].index("--models") + 1].split(",")
    assert models == ["mlp", "cnn"]
    for model in models:
        assert aot.predict(bench._config(bench.Point(model=model)), tpu)["fits"]
