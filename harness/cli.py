"""The ``harness`` command: a thin shell over the library. Bad input → one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import colab, data, settings, topology
from harness.errors import HarnessError, TrainingError
from harness.preemption import StopSignals

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem in one line (no usage dump)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"harness: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Train, evaluate and inspect Flax models on MNIST and Fashion-MNIST.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_train_and_eval, _add_predict, _add_inspection, _add_bench, _add_compile, _add_data):
        add(sub)
    return p


def _add_train_and_eval(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a config into a workdir; extra --config.KEY=VALUE override the config",
        description="Train a config into a workdir, resuming from its latest good checkpoint.",
        epilog="Any config key can be overridden: --config.KEY=VALUE (or --config.KEY VALUE), e.g. "
        "--config.num_epochs=3 --config.batch_size=256 --config.model=mlp --config.mlp_hidden=256,128. "
        "A misspelt key is refused with the list of keys (README's Training section describes them).",
    )
    t.add_argument("--config", default="default", help="config file, or a shipped config's name (default: default)")
    t.add_argument(
        "--workdir",
        help="where metrics, TensorBoard files and checkpoints go (default: runs/CONFIG; in Colab with Google "
        "Drive mounted: MyDrive/harness/runs/CONFIG)",
    )

    e = sub.add_parser("eval", help="evaluate a workdir's latest checkpoint on the full test split")
    e.add_argument("--workdir", required=True)
    e.add_argument("--json", action="store_true", help="print one JSON object")


def _add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="classify test images (--index) or your own files (--image)")
    pr.add_argument("--workdir", required=True)
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--index",
        type=int,
        nargs="+",
        metavar="I",
        help="test images by their position in the test IDX files (t10k-…), from 0",
    )
    which.add_argument(
        "--image", nargs="+", metavar="FILE", help="pictures (PNG, JPEG, …) or .npy arrays, converted to 28×28"
    )
    pr.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        help="--image: make a light background dark like the datasets' (default auto: when the border is light)",
    )
    pr.add_argument("--json", action="store_true", help="print JSON")


def _add_inspection(sub) -> None:
    """``checkpoints``, ``explore`` and ``report``."""
    c = sub.add_parser("checkpoints", help="list a workdir's checkpoints, or --inspect one")
    c.add_argument("workdir")
    c.add_argument("--inspect", type=int, metavar="STEP", help="show the saved config, data position, digest check")

    x = sub.add_parser("explore", help="pictures of a dataset: samples, pixel matrix, 784-vector, classes, table")
    x.add_argument("--dataset", required=True, help=f"{', '.join(data.NAMES)} or one you imported")
    x.add_argument("--split", default="train", choices=("train", "test"))
    x.add_argument("--class", dest="klass", type=int, default=0, metavar="K", help="class to show many of")
    x.add_argument("--out", default=None, help="output folder (default: explore/DATASET-SPLIT)")
    x.add_argument("--data-dir", default=None, help="tfds data dir (default: TFDS_DATA_DIR or tfds' default)")

    r = sub.add_parser("report", help="learning curves, confusion matrix, worst mistakes of a trained workdir")
    r.add_argument("workdir")
    r.add_argument("--out", default=None, help="output folder (default: WORKDIR/report)")


def _add_bench(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="throughput benchmarks into the ledger; `bench report`, `bench check`",
        description="Exit status of `bench check`: 0 ok, 1 a regression (or, with --tta, a seed missing --target), "
        "2 bad arguments, 3 no baseline: nothing checked (no ledger row of this machine for these points).",
    )
    b.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "sweep", "tta", "report", "check", "suite", "accuracy", "compile"),
    )
    b.add_argument("--models", default="mlp,cnn", help="comma-separated (default mlp,cnn)")
    b.add_argument("--batch-sizes", default="128", help="comma-separated global batch sizes (default 128)")
    b.add_argument(
        "--dtypes", default="float32", help="compute dtypes, comma-separated: float32, bfloat16 (default float32)"
    )
    b.add_argument("--parallel", default="pmap", help="pmap, jit, shard_map; comma-separated, e.g. pmap,shard_map")
    b.add_argument(
        "--widths",
        action="append",
        help="multipliers of the models' widths, comma-separated: 1,4,16 for every model, or MODEL=1,8,32 for one "
        "(repeat the flag per model); default 1",
    )
    b.add_argument(
        "--data",
        default="device",
        help="device (a device-resident training-size set, default), host (batches sent from the host), "
        "synthetic (one batch generated on the device: pure compute); comma-separated",
    )
    b.add_argument(
        "--steps-per-dispatch",
        default="auto",
        help="comma-separated, e.g. 1,16; auto (default): what `harness train` runs on these devices",
    )
    b.add_argument("--num-devices", type=int, default=0, help="0 = all local devices")
    b.add_argument("--conv", default="auto", help="CNN convolutions: auto, xla, slices (comma-separated)")
    b.add_argument("--micro-batches", type=int, default=0, help="slices of each device's batch (0 = auto)")
    b.add_argument("--windows", type=int, default=7, help="timing windows (≥ 5)")
    b.add_argument("--dispatches", type=int, default=8, help="dispatches per timing window")
    b.add_argument("--config", default="fashion_mnist_cnn", help="tta: the config to train")
    b.add_argument("--target", type=float, default=0.90, help="tta: the test accuracy to reach, in (0, 1]")
    b.add_argument("--seeds", default="0,1,2", help="tta: comma-separated seeds in [0, 2**32)")
    b.add_argument("--tolerance", type=float, default=0.2, help="check: allowed throughput drop in [0, 1), 0.2 = 20 %%")
    b.add_argument(
        "--ledger",
        default=None,
        help="ledger folder, appended to by run/sweep/tta and read by report/check (default: benchmarks/results of "
        "the harness checkout you are in, else of the current directory)",
    )
    b.add_argument("--no-ledger", action="store_true", help="print rows, append nothing")
    b.add_argument(
        "--out", default=None, help="report: output folder (default: the --ledger folder, else benchmarks/ beside it)"
    )
    b.add_argument("--peers", action="store_true", help="also run the PyTorch/Keras peers (benchmarks/peers)")
    b.add_argument("--tta", action="store_true", help="check: also require every seed to reach --target")
    b.add_argument("--workdirs", nargs="+", default=[], help="accuracy: finished runs of --config, one per seed")
    b.add_argument(
        "--trace", metavar="DIR", help="run: a jax.profiler trace of each point in DIR/<point>, top operations printed"
    )
    b.add_argument("--quick", action="store_true", help="suite: the tiny models only (a test of the suite itself)")
    b.add_argument(
        "--topologies",
        default=None,
        help="compile: TPU slices to compile the grid for, comma-separated (accelerator types or libtpu topologies; "
        f"default {topology.DEFAULT_SLICES})",
    )
    b.add_argument("--fit", action="store_true", help="compile: search each point's largest batch that fits")
    _add_max_batch(b, "compile --fit")
    b.add_argument("--readme", help="report: also render the predicted-TPU table into this README's markers")
    b.add_argument("--budget", type=float, default=420.0, help="suite: seconds to spend at most (default 420)")


def _add_max_batch(parser, which: str) -> None:
    """``--max-batch``, the same for ``harness compile`` and ``harness bench compile``."""
    parser.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help=f"{which}: the largest global batch tried (default 0: the training split's size, the most `harness "
        "train` accepts)",
    )


def _add_compile(sub) -> None:
    c = sub.add_parser(
        "compile",
        help="compile a config's steps for a TPU slice from any host (libtpu): memory, FLOPs, predicted step time",
        description="Compiles the run `harness train --config NAME` would run, for the devices of a described TPU "
        "slice (no TPU needed: `pip install 'harness[tpu]'`); extra --config.KEY=VALUE override the config. "
        "Its figures are XLA's predictions, not measurements.",
    )
    c.add_argument(
        "--topology",
        required=True,
        help="a Cloud TPU accelerator type (v2-8, v5e-8, v5e-256 …) or a libtpu topology (v5e:2x4, v4:2x2x2)",
    )
    c.add_argument("--config", default="default", help="config file, or a shipped config's name (default: default)")
    c.add_argument("--fit", action="store_true", help="also find the largest global batch whose steps fit in HBM")
    _add_max_batch(c, "--fit")
    c.add_argument("--json", action="store_true", help="print one JSON object")


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="import or describe datasets").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser
    )
    imp = d.add_parser("import", help="prepare a shipped dataset, or your own as --as NAME, from IDX files in DIR")
    imp.add_argument("dir", type=Path)
    which = imp.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", choices=data.NAMES, help="the shipped dataset whose four IDX files DIR holds")
    which.add_argument("--as", dest="as_name", metavar="NAME", help="your own dataset's name (lowercase, digits, _)")
    imp.add_argument("--classes", metavar="A,B,…", help="with --as: the class names, label 0's first")
    info = d.add_parser("info", help="every dataset (shipped, imported) with split sizes and classes; or --dataset")
    info.add_argument("--dataset", help="one dataset in detail: splits, shapes, class names, where it lives")
    for q in (imp, info):
        q.add_argument("--data-dir", default=None, help="tfds data dir (default: TFDS_DATA_DIR or tfds' default)")


def _split_overrides(extra: Sequence[str]) -> list[str]:
    """``--config.a=1 --config.b 2`` → ``['a=1', 'b=2']``; anything else is a usage error."""
    overrides, it = [], iter(extra)
    for arg in it:
        if not arg.startswith("--config."):
            raise HarnessError(f"unrecognized argument {arg!r}; config overrides look like --config.KEY=VALUE")
        body = arg[len("--config.") :]
        if "=" not in body:
            value = next(it, None)
            if value is None:
                raise HarnessError(f"{arg}: missing value (use {arg}=VALUE)")
            body = f"{body}={value}"
        overrides.append(body)
    return overrides


def _check_workdir(args) -> None:
    """An empty or blank workdir is an error for every subcommand that takes one (never a silent default)."""
    workdir = getattr(args, "workdir", None)
    if workdir is not None and not workdir.strip():
        name = "workdir" if args.command in ("checkpoints", "report") else "--workdir"
        hint = " (leave --workdir out for the default runs/CONFIG)" if args.command == "train" else ""
        raise HarnessError(f"{name} {workdir!r}: empty; name a folder{hint}")


def _train(args, extra: Sequence[str]) -> int:
    from harness import config as config_lib
    from harness.train import train_and_evaluate

    config = config_lib.load(args.config, _split_overrides(extra))
    config_lib.check_model_keys(config)
    workdir = args.workdir
    if workdir is None:
        workdir = colab.default_workdir(Path(args.config).stem)
        if colab.drive_root() is not None:
            print(f"workdir on Google Drive: {workdir} (checkpoints outlive the Colab runtime)")
    config_lib.check_init_from(config, workdir)
    train_and_evaluate(config, workdir)
    return 0


def _eval(args) -> int:
    from harness.evaluate import evaluate_workdir

    result = evaluate_workdir(args.workdir)
    if args.json:
        print(json.dumps({k: result[k] for k in ("test_accuracy", "test_loss", "step", "epoch", "dataset")}))
    else:
        print(
            f"{result['dataset']} test split ({result['test_examples']:.0f} images), step {result['step']}: "
            f"test_accuracy {result['test_accuracy']:.4f}  test_loss {result['test_loss']:.4f}"
        )
    return 0


def _predict(args) -> int:
    from harness.evaluate import predict, predict_images

    if args.index is not None and args.invert is not None:
        raise HarnessError("--invert applies to --image files only (test-split images are in the dataset's format)")
    if args.image is not None:
        rows = predict_images(args.workdir, args.image, args.invert or "auto")
    else:
        rows = predict(args.workdir, args.index)
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        top3 = ", ".join(f"{name} {p:.3f}" for name, p in r["top3"])
        if "file" in r:
            note = "  (inverted)" if r["inverted"] else ""
            print(f"{r['file']}: predicted {r['predicted']!r}  top-3: {top3}{note}")
        else:
            mark = "✓" if r["correct"] else "✗"
            print(f"#{r['index']}: true {r['true']!r}, predicted {r['predicted']!r} {mark}  top-3: {top3}")
    return 0


def _checkpoints(args) -> int:
    from harness.checkpoint import Checkpoints, describe_position

    ckpt = Checkpoints(Path(args.workdir), create=False)
    try:
        if args.inspect is None:
            rows = ckpt.listing()
            if not rows:
                print(f"{ckpt.directory}: no checkpoints")
            for r in rows:
                fp = r.get("fingerprint") or {}
                known = r.get("epoch") is not None and r.get("step_in_epoch") is not None
                where = describe_position(r["epoch"], r["step_in_epoch"]) if known else ""
                acc = ("mid-epoch" if r["step_in_epoch"] else "not evaluated") if known else ""
                acc = f"test_accuracy {r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else acc
                status = "ok" if r["problem"] is None else f"NOT RESTORABLE: {r['problem']}"
                device = f"{fp.get('platform', '?')}×{fp.get('device_count', '?')}"
                print(f"step {r['step']:>7}  {where:<20} {acc:<22} {r.get('saved_at', '?'):<26} {device:<7} {status}")
            return 0
        step = args.inspect
        if step not in {r["step"] for r in ckpt.listing()}:
            raise HarnessError(f"--inspect {step}: no such checkpoint in {ckpt.directory}")
        problem = ckpt.verify(step)
        meta = ckpt.read_meta(step)
        print(f"step {step}: digest check {'ok' if problem is None else 'FAILED: ' + problem}")
        print(f"data position: {describe_position(meta['epoch'], meta['step_in_epoch'], meta['steps_per_epoch'])}")
        print(f"fingerprint: {json.dumps(meta['fingerprint'], sort_keys=True)}")
        print(f"metric rows saved: {len(meta['history'])}")
        print("config: " + json.dumps(meta["config"], indent=2, sort_keys=True))
        return 0
    finally:
        ckpt.close()


def _explore(args) -> int:
    from harness import pictures
    from harness.data import datasets
    from harness.explore import explore, summary

    out = pictures.check_output_dir(args.out or Path("explore") / f"{args.dataset}-{args.split}", "--out")
    builder, _source = datasets.ensure_prepared(args.dataset, args.data_dir)
    split = datasets.load_split(builder, args.split)
    names = datasets.class_names(args.dataset, args.data_dir)
    page = explore(split, names, args.dataset, args.split, out, args.klass)
    print(summary(split, names, args.dataset, args.split))
    print(f"wrote {len(list(out.glob('*.png')))} pictures and {page.resolve()}")
    return 0


def _report(args) -> int:
    from harness.report import write_report

    page = write_report(Path(args.workdir), Path(args.out) if args.out else None)
    print(f"wrote {page.resolve()}")
    return 0


def _compile(args, extra: Sequence[str]) -> int:
    from harness.compile_cli import compile_command

    return compile_command(args, _split_overrides(extra))


def _bench(args, extra) -> int:
    from harness.bench_cli import run

    return run(args, extra)


def _data(args) -> int:
    from harness.data import describe

    if args.data_command == "import":
        print(describe.import_dir(args.dir, args.dataset, args.as_name, args.classes, args.data_dir))
    elif args.dataset is None:
        print("\n".join(describe.listing(args.data_dir)))
    else:
        print("\n".join(describe.describe(args.dataset, args.data_dir)))
    return 0


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr)


def _settings() -> settings.Settings:
    """Every ``HARNESS_*`` variable, checked before anything runs; a name harness does not know gets a warning."""
    env = settings.load()
    for name in env.unknown:
        _warn(f"{name} is not a harness variable (ignored); known: {', '.join(settings.VARIABLES)}")
    return env


def _jax_cpu_device_count() -> int | None:
    """How many CPU devices JAX has in this process if its backends have started already (a notebook that ran JAX
    code, an earlier in-process call), else None; -1 when started but the count is unknown."""
    if "jax" not in sys.modules:
        return None
    try:
        from jax._src import xla_bridge  # jax 0.10 has no public way to ask without starting them

        if not xla_bridge.backends_are_initialized():
            return None
    except (ImportError, AttributeError):
        return None
    try:
        return len(sys.modules["jax"].devices("cpu"))
    except RuntimeError:
        return -1


def _cpu_devices(wanted: int | None) -> None:
    """``HARNESS_CPU_DEVICES=N`` splits the CPU into N XLA devices: it sets ``XLA_FLAGS``, which only counts before
    JAX starts its backends. Set too late, or against another count in ``XLA_FLAGS``, it warns instead."""
    if wanted is None:
        return
    started = _jax_cpu_device_count()
    if started is not None:
        if started != wanted:
            _warn(
                f"HARNESS_CPU_DEVICES={wanted} has no effect: JAX has already started in this process"
                + (f" with {started} CPU device(s)" if started >= 0 else "")
                + "; set it before the first JAX call (in a notebook: restart the kernel and set it first)"
            )
        return
    flags = os.environ.get("XLA_FLAGS", "")
    found = re.search(r"--xla_force_host_platform_device_count=(\S*)", flags)
    if found is None:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={wanted}".strip()
    elif found.group(1) != str(wanted):
        _warn(f"HARNESS_CPU_DEVICES={wanted} has no effect: XLA_FLAGS already sets {found.group(0)}")


def _quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # its shuffle bars name temp files; harness prints what it prepares instead


TTA_STOPPING = b"harness: stopping: the current seed ends now, the finished ones are kept (Ctrl-C again to quit now)\n"


def _stop_signals(args) -> StopSignals:
    """``harness train`` stops politely after the current step (at once during start-up), ``bench tta`` after the
    current seed; every other command is interrupted at once."""
    if args.command == "train":
        return StopSignals(polite=True, starting=True, owner=True)
    if args.command == "bench" and args.action == "tta":
        return StopSignals(polite=True, owner=True, stopping=TTA_STOPPING)
    return StopSignals(polite=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script."""
    args, extra = _parser().parse_known_args(argv)
    with _stop_signals(args):  # before anything slow: a Ctrl-C is never lost
        try:
            rc = _run(args, extra)
            sys.stdout.flush()  # here, not at exit: a reader that went away is seen below
        except BrokenPipeError:
            return _reader_gone()
        return rc


EXIT_PIPE = 141  # 128 + SIGPIPE: what `git log | head` and other Unix tools end with when the reader goes away


def _reader_gone() -> int:
    """The reader of stdout went away (``harness … | head``): stop quietly, as Unix tools do, with no traceback
    from this or from Python's flush at exit."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # no descriptor: a test's capture
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PIPE


def _run(args, extra: Sequence[str]) -> int:
    try:
        env = _settings()
        if extra and args.command not in ("train", "bench", "compile"):
            raise HarnessError(f"unrecognized arguments: {' '.join(extra)}")
        _check_workdir(args)
        _cpu_devices(env.cpu_devices)
        _quiet_libraries()
        topology.load_quietly()  # libtpu on a host without TPUs: its start-up warnings never reach the terminal
        if args.command == "train":
            return _train(args, extra)
        if args.command == "compile":
            return _compile(args, extra)
        if args.command == "bench":
            return _bench(args, _split_overrides(extra))
        commands = {"eval": _eval, "predict": _predict, "data": _data, "checkpoints": _checkpoints}
        commands |= {"explore": _explore, "report": _report}
        return commands[args.command](args)
    except TrainingError as e:
        print(f"harness: {e}", file=sys.stderr)
        return 1
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
