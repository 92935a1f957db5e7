import pytest

from harness import config as config_lib
from harness.errors import ConfigError

SHIPPED = sorted(p.stem for p in config_lib.CONFIGS_DIR.glob("*.py"))


def test_the_shipped_configs_are_all_there():
    expected = {"default", "mnist_mlp", "mnist_cnn", "fashion_mnist_mlp", "fashion_mnist_cnn", "smoke"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads_and_validates(name):
    c = config_lib.load(name)
    config_lib.validate(c, 8 if c.batch_size % 8 == 0 else 1)
    assert config_lib.load(str(config_lib.CONFIGS_DIR / f"{name}.py")).to_dict() == c.to_dict()


def test_overrides_are_typed_like_the_default():
    c = config_lib.load("smoke", ["num_epochs=3", "learning_rate=0.5", "model=mlp", "mlp_hidden=64,32"])
    assert (c.num_epochs, c.learning_rate, c.model, tuple(c.mlp_hidden)) == (3, 0.5, "mlp", (64, 32))
    assert isinstance(c.learning_rate, float)


def test_locked_config_refuses_misspelled_key():
    with pytest.raises(ConfigError, match="unknown config key 'num_epoch'"):
        config_lib.load("smoke", ["num_epoch=3"])
    with pytest.raises(AttributeError):
        config_lib.load("smoke").num_epoch = 3


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("dataset=cifar10", "config.dataset='cifar10': allowed: mnist, fashion_mnist"),
        ("model=resnet", "config.model='resnet': allowed: mlp, cnn"),
        ("batch_size=0", "config.batch_size=0"),
        ("batch_size=-8", "config.batch_size=-8"),
        ("batch_size=100", "divisible by the device count \\(8\\)"),
        ("learning_rate=0", "config.learning_rate=0.0"),
        ("learning_rate=-1", "config.learning_rate=-1.0"),
        ("learning_rate=inf", "config.learning_rate=inf"),
        ("learning_rate=nan", "config.learning_rate=nan"),
        ("num_epochs=0", "config.num_epochs=0"),
        ("parallel=pjit", "allowed: pmap, jit"),
        ("dtype=float16", "allowed: float32, bfloat16"),
        ("optimizer=lamb", "allowed: sgd, adam, adamw"),
        ("checkpoint_min_seconds=-1", "config.checkpoint_min_seconds=-1.0: must be a finite number >= 0"),
        ("checkpoint_min_seconds=inf", "config.checkpoint_min_seconds=inf"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, match):
    c = config_lib.load("smoke", [override])
    with pytest.raises(ConfigError, match=match) as e:
        config_lib.validate(c, 8)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("num_epochs=two", "config.num_epochs='two': expected an integer$"),
        ("learning_rate=fast", "config.learning_rate='fast': expected a number$"),
        ("nonsense", "KEY=VALUE"),
    ],
)
def test_unparsable_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.load("smoke", [override])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("cnn_channels", (32,), r"config.cnn_channels=\(32,\): must be two positive integers, e.g. 32,64$"),
        ("cnn_channels", (32, 64, 128), r"config.cnn_channels=\(32, 64, 128\): must be two positive integers"),
        ("cnn_channels", (0, 64), r"config.cnn_channels=\(0, 64\)"),
        ("cnn_channels", 32, "config.cnn_channels=32"),
        ("cnn_dense", 0, "config.cnn_dense=0: must be a positive integer$"),
        ("cnn_dense", 2.5, "config.cnn_dense=2.5"),
        ("width", 0, "config.width=0: must be a positive integer$"),
        ("width", -2, "config.width=-2"),
        ("width", True, "config.width=True"),
        ("mlp_hidden", (128, 0), r"config.mlp_hidden=\(128, 0\): must be positive integers, e.g. 256,128$"),
    ],
)
def test_bad_model_widths_are_one_line(key, value, match):
    c = config_lib.base_config()
    with c.ignore_type():  # a config file may set any type
        c[key] = value
    with pytest.raises(ConfigError, match=match) as e:
        config_lib.validate(c, 1)
    assert "\n" not in str(e.value)


def test_width_keys_from_the_command_line():
    c = config_lib.load("smoke", ["cnn_channels=16,32", "cnn_dense=64", "width=4"])
    assert (tuple(c.cnn_channels), c.cnn_dense, c.width) == ((16, 32), 64, 4)
    config_lib.validate(c, 1)
    with pytest.raises(ConfigError, match=r"config.width='wide': expected an integer$"):
        config_lib.load("smoke", ["width=wide"])


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_seed_outside_what_the_generators_take_is_refused(seed):
    c = config_lib.base_config()
    with c.ignore_type():  # a config file may set any type
        c.seed = seed
    with pytest.raises(ConfigError, match=r"config.seed=.*: must be an integer in \[0, 2\*\*32\)$"):
        config_lib.validate(c, 1)
    c = config_lib.base_config()
    c.seed = 2**32 - 1
    config_lib.validate(c, 1)


def test_a_config_file_with_another_suffix_loads_as_python(tmp_path):
    good = tmp_path / "good.cfg"
    good.write_text((config_lib.CONFIGS_DIR / "smoke.py").read_text())
    assert config_lib.load(str(good), ["seed=3"]).to_dict() == config_lib.load("smoke", ["seed=3"]).to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.cfg"]  # no __pycache__ beside it


def test_a_file_that_is_not_python_is_one_line(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    with pytest.raises(ConfigError, match=f"^config file {passwd} failed: SyntaxError: ") as e:
        config_lib.load(str(passwd))
    assert "\n" not in str(e.value)
    (tmp_path / "binary.cfg").write_bytes(b"\x00\xff\xfe")
    with pytest.raises(ConfigError, match=r"binary\.cfg failed: ") as e:
        config_lib.load(str(tmp_path / "binary.cfg"))
    assert "\n" not in str(e.value)


def test_missing_config_file_lists_shipped_configs():
    with pytest.raises(ConfigError, match=r"does not exist; shipped configs: .*smoke"):
        config_lib.load("configs/nope.py")


def test_broken_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return 1 / 0\n")
    with pytest.raises(ConfigError, match="ZeroDivisionError"):
        config_lib.load(str(bad))
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="AttributeError"):
        config_lib.load(str(tmp_path / "none.py"))


def test_micro_batches_must_divide_the_per_device_batch():
    c = config_lib.load("smoke", ["batch_size=64", "micro_batches=3"])
    with pytest.raises(ConfigError, match=r"config.micro_batches=3: .*per-device batch \(8\)"):
        config_lib.validate(c, 8)
    config_lib.validate(config_lib.load("smoke", ["batch_size=64", "micro_batches=8"]), 8)


def test_steps_per_dispatch_must_divide_the_log_and_checkpoint_intervals():
    c = config_lib.base_config()
    c.update(steps_per_dispatch=16, log_every_steps=100)
    with pytest.raises(ConfigError, match=r"steps_per_dispatch=16: must divide config.log_every_steps \(100\)"):
        config_lib.validate(c, 1)
    c.update(log_every_steps=128, checkpoint_every_steps=24)
    with pytest.raises(ConfigError, match="checkpoint_every_steps"):
        config_lib.validate(c, 1)
    c.update(steps_per_dispatch=-1)
    with pytest.raises(ConfigError, match="0 \\(auto\\) or a positive integer"):
        config_lib.validate(c, 1)


def test_boolean_overrides_take_the_same_words_as_the_harness_switches():
    assert config_lib.load("smoke", ["report=off"]).report is False
    assert config_lib.load("smoke", ["report=on", "distributed=no"]).report is True
    words = "1, true, yes, on, 0, false, no, off"
    with pytest.raises(ConfigError, match=rf"config.report='maybe': expected one of {words}"):
        config_lib.load("smoke", ["report=maybe"])


def test_dataset_is_a_shipped_one_or_one_imported_into_the_data_dir(tmp_path, monkeypatch):
    from harness.data import catalog

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))
    c = config_lib.load("smoke", ["dataset=kmnist", f"data_dir={tmp_path}"])
    config_lib.validate(c, 8)
    c = config_lib.load("smoke", ["dataset=letters", f"data_dir={tmp_path}"])
    with pytest.raises(
        ConfigError,
        match=rf"letters': allowed: mnist, fashion_mnist, kmnist \(shipped\); none imported into {tmp_path}$",
    ):
        config_lib.validate(c, 8)
    catalog.write(catalog.Imported("letters", tuple("abcdefghij")), tmp_path)
    config_lib.validate(c, 8)
    c = config_lib.load("smoke", ["dataset=letters"])  # data_dir '' = tfds' default, where it is not
    with pytest.raises(ConfigError, match=f"none imported into {tmp_path / 'default'}"):
        config_lib.validate(c, 8)
    (tmp_path / "letters" / catalog.META_FILE).write_text("{}")
    c = config_lib.load("smoke", ["dataset=letters", f"data_dir={tmp_path}"])
    with pytest.raises(
        ConfigError, match=rf"^config.dataset='letters': {tmp_path}/letters/harness-dataset.json: not a description"
    ):
        config_lib.validate(c, 8)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["augment_translate=-1"], r"^config.augment_translate=-1: must be pixels in 0..27 \(0 = off\)$"),
        (["augment_translate=28"], "config.augment_translate=28: must be pixels in 0..27"),
        (["augment_cutout=29"], r"^config.augment_cutout=29: must be pixels in 0..28 \(0 = off\)$"),
        (["augment_flip=sometimes"], "^config.augment_flip='sometimes': allowed: no, yes, auto$"),
        (["norm=layer"], "^config.norm='layer': allowed: none, batch$"),
        (["norm=batch"], r"^config.norm=batch: BatchNorm is for the CNN models \(cnn, cnn_tiny\), not mlp_tiny$"),
        (
            ["norm=batch", "model=cnn", "micro_batches=4"],
            r"^config.micro_batches=4: BatchNorm \(config.norm=batch\) takes its statistics over the whole batch",
        ),
        (["dropout=1"], r"^config.dropout=1.0: must be a number in \[0, 1\) \(0 = off\)$"),
        (["dropout=-0.1"], "config.dropout=-0.1: must be a number in"),
        (["label_smoothing=1.5"], "config.label_smoothing=1.5: must be a number in"),
        (["ema_decay=1"], "config.ema_decay=1.0: must be a number in"),
        (
            ["schedule=triangle"],
            "^config.schedule='triangle': allowed: constant, warmup_cosine, warmup_linear, one_cycle$",
        ),
        (["schedule=one_cycle"], r"^config.schedule=one_cycle: needs config.warmup_fraction in \(0, 1\)"),
        (
            ["nesterov=yes"],
            r"^config.nesterov=True: needs config.optimizer=sgd with config.momentum > 0 \(has optimizer 'adam'",
        ),
        (["nesterov=yes", "optimizer=sgd", "momentum=0"], "needs config.optimizer=sgd with config.momentum > 0"),
    ],
)
def test_regularisation_keys_are_checked_with_one_line(overrides, match):
    c = config_lib.load("smoke", overrides)
    with pytest.raises(ConfigError, match=match) as e:
        config_lib.validate(c, 8)
    assert "\n" not in str(e.value)


def test_every_regularisation_option_on_validates_and_the_defaults_are_off():
    everything = ["model=cnn_tiny", "norm=batch", "dropout=0.3", "augment_translate=2", "augment_flip=auto"]
    everything += ["augment_cutout=8", "eval_flip=yes", "label_smoothing=0.1", "ema_decay=0.99", "optimizer=sgd"]
    everything += ["nesterov=yes", "schedule=one_cycle", "warmup_fraction=0.25", "micro_batches=1"]
    config_lib.validate(config_lib.load("smoke", everything), 8)
    c = config_lib.base_config()
    assert (c.augment_translate, c.augment_flip, c.augment_cutout, c.eval_flip) == (0, "no", 0, False)
    assert (c.norm, c.dropout, c.label_smoothing, c.ema_decay, c.nesterov) == ("none", 0.0, 0.0, 0.0, False)
