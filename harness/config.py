"""Configs: Python files with ``get_config()``, dotted command-line overrides, and validation.

Config files are Python by convention (as in Flax's examples and big_vision) and are executed when loaded: only
load config files you trust. Every other user input is parsed as data.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from harness import paths, settings
from harness.data import catalog
from harness.errors import ConfigError, DataError

CONFIGS_DIR = paths.shipped("configs")  # configs/ of the checkout, packaged in every wheel

ALLOWED = {  # config.dataset is checked by _dataset: the shipped names and those imported into config.data_dir
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "warmup_cosine", "warmup_linear", "one_cycle"),
    "parallel": ("pmap", "jit", "shard_map"),
    "dtype": ("float32", "bfloat16"),
    "conv": ("auto", "xla", "slices"),
    "norm": ("none", "batch"),
    "cnn_pool": ("avg", "max"),
    "augment_flip": ("no", "yes", "auto"),
}


def base_config() -> ml_collections.ConfigDict:
    """Every key the harness knows, with its default. Shipped configs start from this."""
    c = ml_collections.ConfigDict()
    c.dataset = "fashion_mnist"
    c.data_dir = ""  # '' = tfds' default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.model = "cnn"
    c.mlp_hidden = (128,)  # hidden layer sizes of the `mlp` model
    c.cnn_channels = (32, 64)  # output channels of the `cnn` model's two convolutions
    c.cnn_dense = 256  # units of the `cnn` model's hidden dense layer
    c.cnn_pool = "avg"  # the `cnn` model's 2×2 pooling after each convolution: avg, max
    c.width = 1  # multiplies every width of the model (MLP hidden sizes, CNN channels and dense units)
    c.dtype = "float32"  # compute dtype; parameters are always float32
    c.conv = "auto"  # convolutions: auto (slices on CPU, xla on GPU/TPU), xla, slices
    c.steps_per_dispatch = 0  # train steps run by one device call; 0 = auto (16 on one CPU device, else 1)
    c.micro_batches = 0  # slices of each device's batch per step, gradients summed; 0 = auto (4 for a CPU CNN)
    c.num_epochs = 10
    c.batch_size = 128  # global: split across all devices
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.momentum = 0.9  # sgd only
    c.weight_decay = 1e-4  # adamw only
    c.schedule = "constant"
    c.warmup_fraction = 0.0  # schedules but constant: the share of all training steps rising to the peak, in [0, 1)
    c.seed = 0
    c.parallel = "pmap"
    c.num_devices = 0  # 0 = every local device
    # True: jax.distributed.initialize() first (multi-process; README "Several hosts"); unset (None):
    # HARNESS_DISTRIBUTED decides, else off. A True or False set here or by --config.distributed wins.
    c.distributed = ml_collections.config_dict.placeholder(bool)
    c.log_every_steps = 128
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 0  # 0 = only at the end of each epoch
    # An epoch's end saves only when the last save is this many seconds old (0 = every epoch): a run of 0.2 s
    # epochs saves every few seconds, not 5 times a second. The last epoch, a stop, checkpoint_every_steps and
    # multi-process runs always save.
    c.checkpoint_min_seconds = 10.0
    c.keep_checkpoints = 2  # the latest N good checkpoints …
    c.keep_best = 1  # … plus the best N by test accuracy
    c.init_from = ""  # a workdir whose latest parameters start a new run (fine-tuning)
    c.report = True  # write WORKDIR/report (pictures + index.html) when training ends
    c.stop_at_accuracy = 0.0  # > 0: stop after the first evaluation that reaches this test accuracy
    c.profile_steps = ""  # "A:B": a jax.profiler trace of train steps A to B in WORKDIR/profile (harness.profiling)
    # Regularisation inside the jitted step (README "Regularisation"); every default leaves training as it was.
    c.augment_translate = 0  # shift each training image by up to N pixels each way (pad with 0, crop); 0 = off
    c.augment_flip = "no"  # mirror half the training images: no, yes, auto (yes for fashion_mnist, not digits)
    c.augment_cutout = 0  # zero an N×N square at a random place of each training image; 0 = off
    c.eval_flip = False  # test-time flip: evaluation and prediction average the logits of an image and its mirror
    c.norm = "none"  # none, batch: BatchNorm after each convolution (CNN models), global-batch statistics
    c.dropout = 0.0  # dropout rate in training: inputs of the CNN's dense layers, outputs of the MLP's hidden ones
    c.label_smoothing = 0.0  # in [0, 1): the training loss's targets are (1 - s) one-hot + s / classes
    c.ema_decay = 0.0  # in [0, 1), 0 = off: keep an EMA of the parameters; evaluation, eval and predict use it
    c.nesterov = False  # sgd with momentum: Nesterov's
    return c


def resolve_path(name_or_path: str) -> Path:
    """A config file path, or the name of a shipped config (``mnist_cnn`` → ``configs/mnist_cnn.py``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.resolve()
    shipped = CONFIGS_DIR / f"{name_or_path}.py"
    if path.suffix == "" and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_")))
    raise ConfigError(f"config file {name_or_path!r} does not exist; shipped configs: {names}")


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Loads any file name as Python source (``good.cfg`` too), never reading or writing a ``__pycache__``."""

    def get_code(self, fullname):
        return self.source_to_code(self.get_data(self.path), self.path)


def load(name_or_path: str = "default", overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file (Python source, whatever its suffix), applies ``key=value`` overrides and locks it (a
    misspelled key is an error)."""
    path = resolve_path(name_or_path)
    name = f"harness_config_{path.stem}"
    loader = _SourceLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    try:
        loader.exec_module(module)  # The user named this file: configs are Python by convention.
        config = module.get_config()
    except Exception as e:  # any failure of user code becomes one line
        detail = " ".join(str(e).split())
        raise ConfigError(f"config file {path} failed: {type(e).__name__}: {detail}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path}: get_config() must return an ml_collections.ConfigDict")
    config.lock()
    for override in overrides:
        apply_override(config, override)
    return config


def _convert(key: str, text: str, current):
    if isinstance(current, bool):  # the same words as the HARNESS_* switches
        if text.strip().lower() in settings.TRUE_WORDS:
            return True
        if text.strip().lower() in settings.FALSE_WORDS:
            return False
        raise ConfigError(
            f"config.{key}={text!r}: expected one of {', '.join(settings.TRUE_WORDS + settings.FALSE_WORDS)}"
        )
    if isinstance(current, int | float):
        try:
            value = type(current)(text) if isinstance(current, float) else int(text)
        except ValueError:
            expected = "a number" if isinstance(current, float) else "an integer"
            raise ConfigError(f"config.{key}={text!r}: expected {expected}") from None
        return value
    if isinstance(current, tuple | list):
        try:
            items = [int(p) for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"config.{key}={text!r}: expected comma-separated integers, e.g. 256,128") from None
        return tuple(items)
    if current is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one ``dotted.key=value`` override, typed like the current value."""
    key, sep, text = override.partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} must look like --config.KEY=VALUE")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(config.keys()))}")
    current = node[leaf]
    if current is None and node.get_type(leaf) is bool:
        current = False  # an unset bool placeholder (config.distributed) parses as a bool
    with config.unlocked():
        node[leaf] = _convert(key, text, current)


def _positive(config, key: str, kind=(int,)) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"config.{key}={value!r}: must be a positive finite number")


def _steps_per_dispatch(config: ml_collections.ConfigDict) -> None:
    k = config.steps_per_dispatch
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"config.steps_per_dispatch={k!r}: must be 0 (auto) or a positive integer")
    for key in ("log_every_steps", "checkpoint_every_steps"):
        if k > 1 and config[key] % k:
            raise ConfigError(
                f"config.steps_per_dispatch={k}: must divide config.{key} ({config[key]}), so that rows and "
                "checkpoints fall between dispatches"
            )


def _dataset(config: ml_collections.ConfigDict) -> None:
    """``config.dataset``: a shipped dataset, or one imported into ``config.data_dir`` (tfds' default when empty)."""
    name, data_dir = config.dataset, config.data_dir or None
    try:
        catalog.check_root(data_dir)
    except DataError as e:
        raise ConfigError(f"config.data_dir: {e}" if data_dir else str(e)) from None
    try:
        known = isinstance(name, str) and catalog.read(name, data_dir) is not None
    except DataError as e:  # its description does not read: say which file
        raise ConfigError(f"config.dataset={name!r}: {e}") from None
    if name not in catalog.NAMES and not known:
        raise ConfigError(f"config.dataset={name!r}: allowed: {catalog.allowed_text(data_dir)}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _scale(config: ml_collections.ConfigDict) -> None:
    """The model's widths: ``mlp_hidden`` (any number of sizes), ``cnn_channels`` (two), ``cnn_dense`` and the
    ``width`` multiplier, all positive integers."""
    hidden, channels = config.mlp_hidden, config.cnn_channels
    if not isinstance(hidden, tuple | list) or not all(_is_count(h) for h in hidden):
        raise ConfigError(f"config.mlp_hidden={hidden!r}: must be positive integers, e.g. 256,128")
    if not isinstance(channels, tuple | list) or len(channels) != 2 or not all(_is_count(c) for c in channels):
        raise ConfigError(f"config.cnn_channels={channels!r}: must be two positive integers, e.g. 32,64")
    for key in ("cnn_dense", "width"):
        if not _is_count(config[key]):
            raise ConfigError(f"config.{key}={config[key]!r}: must be a positive integer")


def _is_int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_share(value) -> bool:
    """A number in [0, 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1


def _regularisation(config: ml_collections.ConfigDict) -> None:
    """Augmentation, BatchNorm, dropout, label smoothing, EMA, the schedules' warmup and Nesterov momentum (the
    allowed words of ``augment_flip``, ``norm`` and ``schedule`` are checked through ALLOWED)."""
    from harness.models import MODELS  # models import flax: keep config loading light

    if not _is_int_in(config.augment_translate, 0, 27):
        raise ConfigError(f"config.augment_translate={config.augment_translate!r}: must be pixels in 0..27 (0 = off)")
    if not _is_int_in(config.augment_cutout, 0, 28):
        raise ConfigError(f"config.augment_cutout={config.augment_cutout!r}: must be pixels in 0..28 (0 = off)")
    for key in ("dropout", "label_smoothing", "ema_decay"):
        if not _is_share(config[key]):
            raise ConfigError(f"config.{key}={config[key]!r}: must be a number in [0, 1) (0 = off)")
    for key in ("eval_flip", "nesterov"):
        if not isinstance(config[key], bool):
            raise ConfigError(f"config.{key}={config[key]!r}: must be true or false")
    if config.norm == "batch" and MODELS[config.model].family != "cnn":
        cnns = ", ".join(name for name, entry in MODELS.items() if entry.family == "cnn")
        raise ConfigError(f"config.norm=batch: BatchNorm is for the CNN models ({cnns}), not {config.model}")
    if config.norm == "batch" and config.micro_batches > 1:
        raise ConfigError(
            f"config.micro_batches={config.micro_batches}: BatchNorm (config.norm=batch) takes its statistics over "
            "the whole batch; use 0 (auto, which is 1 with BatchNorm) or 1"
        )
    if config.schedule == "one_cycle" and config.warmup_fraction <= 0:
        raise ConfigError(
            "config.schedule=one_cycle: needs config.warmup_fraction in (0, 1), the share of the run "
            "rising to the peak learning rate (e.g. 0.3)"
        )
    if config.nesterov and (config.optimizer != "sgd" or not config.momentum):
        raise ConfigError(
            f"config.nesterov=True: needs config.optimizer=sgd with config.momentum > 0 (has optimizer "
            f"{config.optimizer!r}, momentum {config.momentum})"
        )


SEED_LIMIT = 2**32  # seeds are in [0, 2**32): what numpy's generators and jax.random.key both take


def _seed(config: ml_collections.ConfigDict) -> None:
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"config.seed={seed!r}: must be an integer in [0, 2**32)")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Checks every key against what is allowed; ``num_devices`` is the device count the run will use."""
    from harness.models import MODELS  # models import flax: keep config loading light

    _dataset(config)
    for key, allowed in ALLOWED.items():
        if config[key] not in allowed:
            raise ConfigError(f"config.{key}={config[key]!r}: allowed: {', '.join(allowed)}")
    if config.model not in MODELS:
        raise ConfigError(f"config.model={config.model!r}: allowed: {', '.join(MODELS)}")
    for key in ("batch_size", "num_epochs", "log_every_steps", "eval_every_epochs"):
        _positive(config, key)
    _positive(config, "learning_rate", (int, float))
    if config.num_devices < 0:
        raise ConfigError(f"config.num_devices={config.num_devices}: must be 0 (all) or a positive count")
    if config.batch_size % num_devices:
        raise ConfigError(
            f"config.batch_size={config.batch_size}: must be divisible by the device count ({num_devices})"
        )
    if config.micro_batches < 0 or (config.micro_batches and (config.batch_size // num_devices) % config.micro_batches):
        raise ConfigError(
            f"config.micro_batches={config.micro_batches}: must be 0 (auto) or divide the per-device batch "
            f"({config.batch_size // num_devices})"
        )
    _steps_per_dispatch(config)
    _seed(config)
    _scale(config)
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(f"config.warmup_fraction={config.warmup_fraction}: must be in [0, 1) (a share of the run)")
    for key in ("checkpoint_every_steps", "keep_best"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 0:
            raise ConfigError(f"config.{key}={config[key]!r}: must be an integer >= 0")
    _positive(config, "keep_checkpoints")
    if not 0 <= config.stop_at_accuracy <= 1:
        raise ConfigError(f"config.stop_at_accuracy={config.stop_at_accuracy}: must be in [0, 1] (0 = off)")
    for key in ("momentum", "weight_decay", "checkpoint_min_seconds"):
        if not (math.isfinite(config[key]) and config[key] >= 0):
            raise ConfigError(f"config.{key}={config[key]}: must be a finite number >= 0")
    _regularisation(config)
    _profile(config)


# The size keys each model reads; the tiny test models have fixed sizes and read none of them.
MODEL_KEYS = {"mlp": ("mlp_hidden",), "cnn": ("cnn_channels", "cnn_dense", "cnn_pool"), "mlp_tiny": (), "cnn_tiny": ()}
SIZE_KEYS = ("mlp_hidden", "cnn_channels", "cnn_dense", "cnn_pool")


def check_model_keys(config: ml_collections.ConfigDict) -> None:
    """Refuses a size key set away from its default for a model that ignores it (``mlp_hidden`` with ``mlp_tiny``
    or ``cnn``): the run would not be the model asked for. For ``harness train``: saved runs are not re-checked."""
    reads = MODEL_KEYS.get(config.model)
    if reads is None:
        return
    defaults = base_config()
    for key in SIZE_KEYS:
        value, default = config[key], defaults[key]
        same = tuple(value) == tuple(default) if isinstance(value, tuple | list) else value == default
        if key not in reads and not same:
            users = ", ".join(m for m, keys in MODEL_KEYS.items() if key in keys)
            raise ConfigError(
                f"config.{key}={value!r}: the {config.model} model does not read it (only {users} does); use "
                f"--config.model={users.split(',')[0]} or leave {key} out"
            )


def check_init_from(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    """``config.init_from`` for a run into ``workdir``: another run's workdir holding checkpoints. Not checked when
    ``workdir`` has checkpoints already (the run resumes from its own; the source is not read again)."""
    if not config.init_from:
        return
    source, workdir = Path(config.init_from).expanduser().resolve(), Path(workdir).expanduser().resolve()
    if source == workdir:
        raise ConfigError(
            f"config.init_from={config.init_from!r}: this run's own workdir; a run resumes from its own checkpoints "
            "by itself, init_from names another run's workdir"
        )
    if (workdir / "checkpoints").is_dir():
        return
    if not (source / "checkpoints").is_dir():
        raise ConfigError(
            f"config.init_from={config.init_from!r}: no checkpoints there; name the workdir of a trained run "
            "(the folder holding its checkpoints/)"
        )


def _profile(config: ml_collections.ConfigDict) -> None:
    from harness.profiling import parse_steps  # imports jax: keep config loading light

    parse_steps(config.profile_steps)
