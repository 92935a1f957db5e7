"""The ``harness`` command: real subprocesses for the user's paths, in-process ``main`` for the many bad inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import write_tiny_idx
from PIL import Image

from harness import cli


def run_cli(*args, env=None, cwd=None):
    full_env = {**os.environ, "HARNESS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
    )


def assert_one_line_error(proc_or_err, code=2):
    rc, err = proc_or_err
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_import_train_eval_predict(tmp_path):
    idx_dir, data_dir, workdir = tmp_path / "idx", tmp_path / "tfds", tmp_path / "run"
    write_tiny_idx(idx_dir)
    p = run_cli("data", "import", str(idx_dir), "--dataset", "mnist", "--data-dir", str(data_dir))
    assert p.returncode == 0 and "imported mnist" in p.stdout, p.stderr
    overrides = [f"--config.data_dir={data_dir}", "--config.dataset=mnist", "--config.batch_size", "64"]
    p = run_cli("train", "--config", "smoke", "--workdir", str(workdir), *overrides)
    assert p.returncode == 0, p.stderr
    assert "compiling… " in p.stdout and "final test_accuracy" in p.stdout
    p = run_cli("eval", "--workdir", str(workdir), "--json")
    result = json.loads(p.stdout)
    assert p.returncode == 0 and {"test_accuracy", "test_loss", "step"} <= result.keys() and result["step"] == 8
    p = run_cli("predict", "--workdir", str(workdir), "--index", "0", "5")
    assert p.returncode == 0 and p.stdout.count("top-3:") == 2 and "predicted" in p.stdout
    picture = draw_class(tmp_path / "three.png", 3)
    p = run_cli("predict", "--workdir", str(workdir), "--image", str(picture), "--json")
    assert p.returncode == 0, p.stderr
    [row] = json.loads(p.stdout)  # the smoke model (8 steps) is too weak to rely on its answer: structure only
    assert row["file"] == str(picture) and row["inverted"] is True and row["predicted"] == row["top3"][0][0]
    probs = [q for _, q in row["top3"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def draw_class(path, k):
    """The synthetic data's class ``k`` (rows 2k+2..2k+4 lit) as a dark bar on white, the way a user would draw it."""
    picture = np.full((28, 28), 255, np.uint8)
    picture[2 * k + 2 : 2 * k + 5, 4:24] = 0
    Image.fromarray(picture).save(path)
    return path


def test_predict_own_images(main_rc, capsys, tiny_config, tmp_path):
    """The tiny MLP learns the synthetic classes (test accuracy 1.0): drawn pictures of them must come back right."""
    from harness import train
    from harness.data import datasets

    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config, workdir, print_fn=lambda _: None)
    names = datasets.class_names(tiny_config.dataset)
    pictures = [str(draw_class(tmp_path / f"class{k}.png", k)) for k in range(10)]
    bright = np.zeros((28, 28, 1), np.float32)
    bright[2 * 7 + 2 : 2 * 7 + 5, 4:24] = 1.0  # class 7 as the dataset stores it, in [0, 1] floats
    np.save(tmp_path / "seven.npy", bright)
    files = [*pictures, str(tmp_path / "seven.npy")]
    assert cli.main(["predict", "--workdir", str(workdir), "--image", *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["predicted"] for r in rows] == [*names, names[7]]
    assert [r["inverted"] for r in rows] == [True] * 10 + [False]
    assert [r["file"] for r in rows] == files
    assert cli.main(["predict", "--workdir", str(workdir), "--image", pictures[3]]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{pictures[3]}: predicted {names[3]!r}  top-3: {names[3]} ") and out.endswith("(inverted)")
    assert cli.main(["predict", "--workdir", str(workdir), "--image", pictures[3], "--invert", "no"]) == 0
    assert "(inverted)" not in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a picture")
    line = assert_one_line_error(
        main_rc("predict", "--workdir", str(workdir), "--image", pictures[0], str(tmp_path / "notes.txt"))
    )
    assert "notes.txt: not an image" in line


def test_no_data_source_is_one_line_with_both_ways(tmp_path):
    p = run_cli(
        "train",
        "--config",
        "smoke",
        "--workdir",
        str(tmp_path / "w"),
        "--config.dataset=mnist",
        env={"TFDS_DATA_DIR": str(tmp_path / "empty")},
    )
    line = assert_one_line_error((p.returncode, p.stderr))
    assert "harness data import" in line and "no mnist data" in line
    assert not (tmp_path / "w").exists()


def test_batch_not_divisible_by_device_count_subprocess(tmp_path):
    p = run_cli("train", "--config", "smoke", "--workdir", str(tmp_path), "--config.batch_size=100")
    assert "divisible by the device count (8)" in assert_one_line_error((p.returncode, p.stderr))


@pytest.fixture
def main_rc(capsys):
    def call(*argv):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:  # argparse's own exits
            rc = e.code
        return rc, capsys.readouterr().err

    return call


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--config", "nope.py"], "does not exist"),
        (["train", "--config", "smoke", "--config.dataset=cifar10"], "allowed: mnist, fashion_mnist"),
        (["train", "--config", "smoke", "--config.model=vit"], "allowed: mlp, cnn"),
        (["train", "--config", "smoke", "--config.batch_size=0"], "config.batch_size=0"),
        (["train", "--config", "smoke", "--config.learning_rate=-0.1"], "config.learning_rate=-0.1"),
        (["train", "--config", "smoke", "--config.num_epochs=0"], "config.num_epochs=0"),
        (["train", "--config", "smoke", "--config.parallel=xmap"], "allowed: pmap, jit"),
        (["train", "--config", "smoke", "--config.dtype=int8"], "allowed: float32, bfloat16"),
        (["train", "--config", "smoke", "--config.optimizer=rmsprop"], "allowed: sgd, adam, adamw"),
        (["train", "--config", "smoke", "--config.num_devices=64"], "only 8 cpu device"),
        (["train", "--config", "smoke", "--config.batch_sise=64"], "unknown config key 'batch_sise'"),
        (["train", "--config", "smoke", "--lr=3"], "unrecognized argument '--lr=3'"),
        (["eval", "--workdir", "/nonexistent/run"], "no trained run here"),
        (["predict", "--workdir", "w"], "one of the arguments --index --image is required"),
        (["predict", "--workdir", "w", "--index", "0", "--image", "a.png"], "not allowed with argument"),
        (["predict", "--workdir", "w", "--index", "0", "--invert", "yes"], "--invert applies to --image"),
        (["predict", "--workdir", "w", "--image", "a.png", "--invert", "maybe"], "invalid choice: 'maybe'"),
        (["predict", "--workdir", "w", "--image", "missing.png"], "missing.png: no such file"),
        (["data", "info", "--dataset", "cifar10"], "unknown dataset 'cifar10'; allowed: mnist, fashion_mnist, kmnist"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(main_rc, argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fragment in assert_one_line_error(main_rc(*argv))
    assert not (tmp_path / "runs").exists()


def test_import_refuses_truncated_file_and_writes_nothing(main_rc, tmp_path):
    src = tmp_path / "src"
    write_tiny_idx(src, num_train=20, num_test=5)
    (src / "t10k-images-idx3-ubyte").write_bytes((src / "t10k-images-idx3-ubyte").read_bytes()[:-100])
    line = assert_one_line_error(
        main_rc("data", "import", str(src), "--dataset", "mnist", "--data-dir", str(tmp_path / "d"))
    )
    assert "t10k-images-idx3-ubyte" in line and "truncated" in line
    assert not (tmp_path / "d").exists()


def test_import_refuses_an_empty_split_and_writes_nothing(main_rc, tmp_path):
    src = tmp_path / "src"
    write_tiny_idx(src, num_train=20, num_test=0)  # valid headers, 0 test items
    line = assert_one_line_error(
        main_rc("data", "import", str(src), "--dataset", "mnist", "--data-dir", str(tmp_path / "d"))
    )
    assert "t10k-images-idx3-ubyte: the header announces 0 images" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--config", "smoke", "--config.seed=-1"], "config.seed=-1: must be an integer in [0, 2**32)"),
        (["train", "--config", "/etc/passwd"], "config file /etc/passwd failed: SyntaxError: "),
        (["train", "--config", "smoke", "--config.num_epochs=two"], "config.num_epochs='two': expected an integer"),
    ],
)
def test_bad_seed_and_a_config_that_is_not_python_are_one_line(main_rc, argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fragment in assert_one_line_error(main_rc(*argv))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--workdir", ""],
        ["train", "--config", "smoke", "--workdir", "  "],
        ["eval", "--workdir", ""],
        ["predict", "--workdir", " ", "--index", "0"],
        ["checkpoints", ""],
        ["report", "\t"],
    ],
)
def test_an_empty_workdir_is_one_line_for_every_subcommand(main_rc, argv, tmp_path, monkeypatch):
    from harness import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail(f"trained into {a[1]!r}"))
    line = assert_one_line_error(main_rc(*argv))
    assert "workdir" in line and ": empty; name a folder" in line
    assert list(tmp_path.iterdir()) == []


def test_import_twice_is_refused(main_rc, tmp_path, tiny_idx_dir, tiny_data_dir):
    line = assert_one_line_error(
        main_rc("data", "import", str(tiny_idx_dir), "--dataset", "mnist", "--data-dir", tiny_data_dir)
    )
    assert "already prepared" in line


def test_data_info(main_rc, capsys, tiny_data_dir):
    rc = cli.main(["data", "info", "--dataset", "fashion_mnist", "--data-dir", tiny_data_dir])
    out = capsys.readouterr().out
    assert rc == 0 and "split train: 512 examples" in out and "Ankle boot" in out and "(28, 28, 1)" in out


def test_checkpoints_listing_and_inspect(main_rc, capsys, tiny_config, tmp_path):
    from harness import train

    tiny_config.update(checkpoint_every_steps=3)
    train.train_and_evaluate(tiny_config, tmp_path, print_fn=lambda _: None)
    assert cli.main(["checkpoints", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("step      16  end of epoch 2  ") and listing[0].endswith("ok")
    assert all("cpu×8" in line for line in listing)
    assert cli.main(["checkpoints", str(tmp_path), "--inspect", "16"]) == 0
    out = capsys.readouterr().out
    assert "digest check ok" in out and "data position: end of epoch 2\n" in out and '"model": "mlp_tiny"' in out
    assert "no such checkpoint" in assert_one_line_error(main_rc("checkpoints", str(tmp_path), "--inspect", "5"))


def test_foreign_workdir_and_changed_config_are_one_line(main_rc, tmp_path, tiny_data_dir):
    (tmp_path / "paper.txt").write_text("keep me")
    base = ["train", "--config", "smoke", f"--config.data_dir={tiny_data_dir}", "--config.batch_size=64"]
    assert "not a harness workdir" in assert_one_line_error(main_rc(*base, "--workdir", str(tmp_path)))
    assert [p.name for p in tmp_path.iterdir()] == ["paper.txt"]
    run = tmp_path / "run"
    assert main_rc(*base, "--workdir", str(run))[0] == 0
    line = assert_one_line_error(main_rc(*base, "--workdir", str(run), "--config.seed=1"))
    assert "seed (0 → 1)" in line


def test_cpu_devices_knob(tmp_path):
    env = {"HARNESS_CPU_DEVICES": "3", "XLA_FLAGS": ""}
    args = [
        "bench",
        "--models",
        "mlp_tiny",
        "--batch-sizes",
        "12",
        "--windows",
        "5",
        "--dispatches",
        "1",
        "--no-ledger",
    ]
    p = run_cli(*args, env=env)
    assert p.returncode == 0, p.stderr
    row = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("{")))
    assert row["fingerprint"]["device_count"] == 3 and "device_count=3" in row["fingerprint"]["xla_flags"]
    p = run_cli(*args, env={"HARNESS_CPU_DEVICES": "many"})
    assert_one_line_error((p.returncode, p.stderr))


LETTERS = "a,b,c,d,e,f,g,h,i,j"


@pytest.mark.parametrize("how", [["--dataset", "kmnist"], ["--as", "letters", "--classes", LETTERS]])
def test_import_train_predict_explore_info_of_kmnist_and_a_named_dataset(
    how, tiny_idx_dir, tmp_path, capsys, monkeypatch
):
    from harness import explore
    from harness.data import datasets, idx

    name, data_dir, workdir = how[1], tmp_path / "tfds", tmp_path / "run"
    assert cli.main(["data", "import", str(tiny_idx_dir), *how, "--data-dir", str(data_dir)]) == 0
    assert f"imported {name} from {tiny_idx_dir}" in capsys.readouterr().out
    classes = datasets.class_names(name, str(data_dir))
    kmnist = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    assert classes == (LETTERS.split(",") if name == "letters" else kmnist)
    overrides = [f"--config.dataset={name}", f"--config.data_dir={data_dir}", "--config.batch_size=64"]
    overrides += ["--config.num_devices=1", "--config.steps_per_dispatch=1", "--config.report=no"]  # compiles fast
    assert cli.main(["train", "--config", "smoke", "--workdir", str(workdir), *overrides]) == 0
    out = capsys.readouterr().out
    assert (
        f"training mlp_tiny on {name} (prepared tfds data in {data_dir / name}" in out and "final test_accuracy" in out
    )
    assert cli.main(["predict", "--workdir", str(workdir), "--index", "0", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["true"] in classes and {c for c, _ in r["top3"]} <= set(classes) for r in rows)
    _, file_labels = idx.load_split(tiny_idx_dir, "test")  # --index counts in the files' order (issue 22 item 10)
    assert [r["true"] for r in rows] == [classes[k] for k in file_labels[:2]]
    seen = {}  # the pictures are test_explore's: here, what explore is given (drawing them takes seconds)
    monkeypatch.setattr(explore, "explore", lambda split, names, *a: seen.update(n=len(split), names=names) or tmp_path)
    assert cli.main(["explore", "--dataset", name, "--data-dir", str(data_dir), "--out", str(tmp_path / "x")]) == 0
    assert f"{name} train: 512 examples" in capsys.readouterr().out and seen == {"n": 512, "names": classes}
    assert cli.main(["data", "info", "--data-dir", str(data_dir)]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{name} ")]
    kind = "imported" if name == "letters" else "shipped"
    assert line.split()[:6] == [name, kind, "train", "512,", "test", "100"] and line.endswith(", ".join(classes))


BAD_IMPORTS = [  # (arguments after `data import DIR`, the error's fragment); tests/test_catalog_cli.py runs them too
    (["--as", "Letters", "--classes", LETTERS], "--as 'Letters': a dataset name is a lowercase letter"),
    (["--as", "my-set", "--classes", LETTERS], "--as 'my-set': a dataset name is"),
    (["--as", "fashion_mnist", "--classes", LETTERS], "--as fashion_mnist: a shipped dataset's name"),
    (["--as", "letters", "--classes", "a,b,c"], "--classes names 3 classes, but the labels in"),
    (["--as", "letters", "--classes", "a,b,c,d,e,f,g,h,i,a"], "'a' named more than once"),
    (["--as", "letters"], "--as letters needs --classes"),
    (["--dataset", "kmnist", "--classes", LETTERS], "--classes goes with --as NAME"),
    (["--dataset", "kmnist", "--as", "letters"], "not allowed with argument"),
    (["--dataset", "cifar10"], "invalid choice: 'cifar10'"),
]


@pytest.mark.parametrize(("argv", "fragment"), BAD_IMPORTS)
def test_bad_imports_are_one_line_and_write_nothing(main_rc, tiny_idx_dir, tmp_path, argv, fragment):
    line = assert_one_line_error(main_rc("data", "import", str(tiny_idx_dir), *argv, "--data-dir", str(tmp_path / "d")))
    assert fragment in line
    assert not (tmp_path / "d").exists()


def test_unknown_and_clashing_names_are_one_line(main_rc, tiny_idx_dir, tmp_path):
    data_dir = str(tmp_path / "d")
    missing = tmp_path / "empty"
    missing.mkdir()
    line = assert_one_line_error(
        main_rc("data", "import", str(missing), "--as", "x", "--classes", LETTERS, "--data-dir", data_dir)
    )
    assert "missing train-images-idx3-ubyte, train-labels-idx1-ubyte" in line
    assert (
        main_rc("data", "import", str(tiny_idx_dir), "--as", "letters", "--classes", LETTERS, "--data-dir", data_dir)[0]
        == 0
    )
    line = assert_one_line_error(
        main_rc("data", "import", str(tiny_idx_dir), "--as", "letters", "--classes", LETTERS, "--data-dir", data_dir)
    )
    assert "letters is already imported into" in line
    allowed = f"allowed: mnist, fashion_mnist, kmnist (shipped); letters (imported into {data_dir})"
    for argv in (
        ["explore", "--dataset", "leters", "--data-dir", data_dir],
        ["data", "info", "--dataset", "leters", "--data-dir", data_dir],
        [
            "train",
            "--config",
            "smoke",
            "--config.dataset=leters",
            f"--config.data_dir={data_dir}",
            "--workdir",
            str(tmp_path / "w"),
        ],
    ):
        assert allowed in assert_one_line_error(main_rc(*argv))
    assert not (tmp_path / "w").exists()
