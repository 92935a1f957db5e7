"""The peers' recipe: read from the shipped CNN config, never repeated in the peer modules or bench."""

from pathlib import Path

import pytest

from harness import config as config_lib
from harness import peers


def test_the_recipe_is_the_shipped_cnn_config():
    c = peers.recipe()
    shipped = config_lib.load("fashion_mnist_cnn")
    assert all(c[k] == shipped[k] for k in peers.RECIPE_KEYS)
    assert peers.copies_recipe(config_lib.load("default"))
    assert not peers.copies_recipe(config_lib.load("fashion_mnist_mlp"))
    assert not peers.copies_recipe(config_lib.load("fashion_mnist_cnn", ["learning_rate=0.01"]))


def test_a_recipe_the_peers_do_not_implement_is_refused(tmp_path, monkeypatch):
    sgd = tmp_path / "sgd_cnn.py"
    sgd.write_text(
        "from harness.config import load\n\n\ndef get_config():\n"
        "    c = load('fashion_mnist_cnn')\n    c.optimizer = 'sgd'\n    return c\n"
    )
    monkeypatch.setattr(peers, "RECIPE_CONFIG", str(sgd))
    with pytest.raises(ValueError, match="not sgd, constant, float32"):
        peers.recipe()


def test_the_peer_modules_read_the_recipe_not_literals():
    for module in peers.modules():
        assert module.recipe is peers.recipe, module.NAME
        source = Path(module.__file__).read_text()
        assert "1e-3" not in source and "batch_size=128" not in source, module.NAME
