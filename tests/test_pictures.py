"""harness.pictures: the style holds while harness draws and never leaks into the process's matplotlib settings."""

import matplotlib
import numpy as np

from harness import pictures


def _settings() -> dict:
    """rcParams but the backend, which drawing picks (Agg) when none was chosen and there is no display."""
    return {k: v for k, v in dict.items(matplotlib.rcParams) if not k.startswith("backend")}


def test_drawing_applies_the_style_only_while_it_draws(tmp_path):
    before = _settings()
    fig = pictures.image_grid(np.zeros((2, 28, 28), np.uint8), ["a", "b"], 2, "two blanks")
    assert fig.get_suptitle() == "two blanks" and fig._suptitle.get_fontsize() == 1.2 * 9  # 'large' of font.size 9
    assert fig.axes[0].title.get_fontsize() == 7
    pictures.save(fig, tmp_path / "grid.png")
    assert _settings() == before
    with pictures.drawing():
        assert matplotlib.rcParams["font.size"] == 9
    assert matplotlib.rcParams["font.size"] == before["font.size"]
