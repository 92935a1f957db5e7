"""The process and its devices: device selection, free memory, the compilation cache."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from harness import runtime
from harness.errors import ConfigError


def test_devices_are_the_first_n_local_ones_and_too_many_is_one_line():
    assert runtime.select_devices(3) == jax.local_devices()[:3]
    assert runtime.select_devices(0) == jax.local_devices()
    with pytest.raises(ConfigError, match=r"^config.num_devices=9: only 8 cpu device\(s\) here$"):
        runtime.select_devices(9)


def test_cpu_devices_share_the_hosts_available_memory(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000 kB\nMemAvailable:    8000 kB\n")
    monkeypatch.setattr(runtime, "Path", lambda path: meminfo if path == "/proc/meminfo" else Path(path))
    assert runtime.available_bytes(jax.devices()[:1]) == 8000 * 1024
    assert runtime.available_bytes(jax.devices()[:8]) == 1000 * 1024


def test_free_memory_is_read_from_this_processs_devices_only():
    """With several processes the device list starts with another process's device, whose memory_stats() raises
    (``INVALID_ARGUMENT: ... only supported for addressable PjRt devices``): the first local one is asked."""
    import types

    def device(process, free):
        def stats():
            if process != jax.process_index():
                raise RuntimeError("MemoryStats is only supported for addressable PjRt devices")
            return {"bytes_limit": free, "bytes_in_use": 0}

        return types.SimpleNamespace(process_index=process, platform="gpu", memory_stats=stats)

    assert runtime.available_bytes([device(1, 5), device(0, 7), device(0, 9)]) == 7
    assert runtime.available_bytes([device(1, 5)]) is None


def test_compilation_cache_dir_and_off_switch(tmp_path):
    """In fresh processes: JAX initialises its cache once per process, and this suite has compiled already."""
    script = (
        "import jax, numpy as np; from harness import runtime; d = runtime.enable_compilation_cache(); "
        "jax.jit(lambda x: x * 2 + 1)(np.ones(3)); print(d)"
    )

    def run(value):
        env = {**os.environ, "HARNESS_COMPILATION_CACHE": value}
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().splitlines()[-1]

    assert run(str(tmp_path / "cache")) == str(tmp_path / "cache")
    assert any((tmp_path / "cache").iterdir())  # the compiled program was stored
    assert run("off") == "None"
