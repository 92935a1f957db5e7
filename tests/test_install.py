"""harness installed as users install it (a wheel, not editable, into a fresh venv) and run from a directory
outside the checkout: shipped configs, data, training, evaluation, pictures and the benchmark ledger."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, fresh_venv, pip_env


def _digest(directory) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(str(p).encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def venv(harness_wheel, tmp_path_factory):
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "venv")
    install = [str(python), "-m", "pip", "install", "-q", str(harness_wheel)]
    subprocess.run(install, check=True, capture_output=True, env=pip_env(), timeout=300)
    return python


def _run(venv, cwd, *args, env=None, timeout=300) -> str:
    bin_dir = venv.parent
    environ = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HARNESS_OFFLINE": "1",
        **(env or {}),
    }
    p = subprocess.run(args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_the_installed_package_is_the_wheel_with_its_configs_and_peers(venv, tmp_path):
    code = (
        "import json, harness, harness.config as c, harness.peers as p;"
        "print(json.dumps([harness.__file__, str(c.CONFIGS_DIR), sorted(x.stem for x in c.CONFIGS_DIR.glob('*.py')),"
        " sorted(x.stem for x in p.PEERS_DIR.glob('*.py'))]))"
    )
    module, configs_dir, configs, peers = json.loads(_run(venv, tmp_path, str(venv), "-c", code))
    site = str(venv.parent.parent)
    assert module.startswith(site) and configs_dir.startswith(site), (module, configs_dir)
    assert configs == sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    assert peers == sorted(p.stem for p in (REPO / "benchmarks" / "peers").glob("*.py"))


def test_every_subcommand_runs_from_outside_the_checkout(venv, tmp_path, tiny_data_dir):
    repo_bench = _digest(REPO / "benchmarks")
    env = {"TFDS_DATA_DIR": tiny_data_dir}
    trained = _run(venv, tmp_path, "harness", "train", "--config", "smoke", "--workdir", "run", env=env)
    assert "final test_accuracy" in trained and (tmp_path / "run" / "report" / "index.html").is_file()
    result = json.loads(_run(venv, tmp_path, "harness", "eval", "--workdir", "run", "--json", env=env))
    assert result["step"] == 2 and 0 <= result["test_accuracy"] <= 1  # 512 tiny examples, batch 256
    _run(venv, tmp_path, "harness", "explore", "--dataset", "fashion_mnist", "--out", "pics", env=env)
    assert len(list((tmp_path / "pics").glob("*.png"))) >= 4
    bench = ["harness", "bench", "--models", "mlp", "--windows", "5", "--dispatches", "2"]
    assert "ledger: appended to benchmarks/results/cpu.jsonl" in _run(venv, tmp_path, *bench).replace(
        str(tmp_path) + "/", ""
    )
    (row,) = [json.loads(line) for line in (tmp_path / "benchmarks" / "results" / "cpu.jsonl").open()]
    assert row["git_commit"] is None and row["point"]["steps_per_dispatch"] >= 1
    _run(venv, tmp_path, "harness", "bench", "report")
    assert (tmp_path / "benchmarks" / "LEADERBOARD.md").is_file()
    assert _digest(REPO / "benchmarks") == repo_bench  # the checkout's ledger and pictures are untouched
    assert not list(venv.parent.parent.rglob("benchmarks"))  # nothing written inside the venv


def test_the_plain_install_is_light_and_says_how_to_compile_for_a_tpu(venv, harness_wheel, tmp_path):
    """The plain wheel requires no libtpu (~700 MB; only its `tpu` and `test` extras do), and without libtpu
    `harness compile` says in one line how to get it, exit 2 (the test venv shares this venv's packages, libtpu
    included: the installed harness runs with libtpu hidden)."""
    import zipfile

    with zipfile.ZipFile(harness_wheel) as wheel:
        meta = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    tpu = [line for line in requires if "tpu" in line]
    assert tpu and all("extra ==" in line for line in tpu), tpu
    hidden = "import sys; sys.modules['libtpu'] = None; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run(
        [str(venv), "-c", hidden, "compile", "--topology", "v5e-8"], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "harness: error: compiling for a TPU slice needs libtpu, which is not installed: "
        "pip install 'harness[tpu]' (libtpu, about 700 MB)"
    ]


def test_every_shipped_config_loads_installed(venv, tmp_path):
    names = sorted(p.stem for p in (REPO / "configs").glob("*.py"))
    code = "import sys, harness.config as c; [c.load(n, ['num_epochs=1']) for n in sys.argv[1:]]; print('ok')"
    assert _run(venv, tmp_path, str(venv), "-c", code, *names).strip() == "ok"


def test_wheel_holds_no_second_copy_of_the_configs_in_the_repository():
    assert not (REPO / "harness" / "_configs").exists() and not (REPO / "harness" / "_peers").exists()
    assert sys.modules.get("harness._configs") is None
