"""Opens a page in headless Chromium (Debian's `chromium`) and reports what a person would see."""

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

_PROBE = """<script>window.addEventListener('load', () => {
  document.body.setAttribute('data-image-widths',
    JSON.stringify(Array.from(document.images, i => (i.complete ? i.naturalWidth : -1))));
});</script>"""


def render(page: Path) -> tuple[list[int], str]:
    """(natural width of every <img> after load, the page's visible text) as headless Chromium renders it."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    probe.unlink()
    match = re.search(r'data-image-widths="([^"]*)"', dom)
    assert match, "the page did not finish loading in Chromium"
    widths = json.loads(match.group(1).replace("&quot;", '"'))
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S))
    return widths, text
