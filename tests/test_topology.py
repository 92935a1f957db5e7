"""harness.topology: described TPU slices from libtpu on a CPU host, their names, and libtpu's quiet start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import topology
from harness.errors import HarnessError

libtpu = pytest.mark.skipif(topology.libtpu_version() is None, reason="libtpu is not installed (harness[tpu])")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("v2-8", ("v2:2x2", None)),
        ("V5E-8", ("v5e:2x4", (2, 4, 1))),
        ("v5litepod-256", ("v5e:16x16", None)),
        ("v4:2x2x2", ("v4:2x2x2", None)),
        ("v6e:4x4", ("v6e:4x4", None)),
    ],
)
def test_accelerator_types_and_topologies_resolve(name, expected):
    assert topology.resolve_name(name) == expected


@pytest.mark.parametrize("name", ["v9-8", "tpu", "v5e", "v5e:2", "v5e-8x", ""])
def test_a_name_that_is_no_slice_is_one_line_naming_what_is_allowed(name):
    with pytest.raises(HarnessError) as e:
        topology.resolve_name(name)
    assert "\n" not in str(e.value) and "v2-8" in str(e.value) and "v5e:2x4" not in str(e.value)


@libtpu
@pytest.mark.parametrize(
    ("name", "devices", "chips", "hosts", "kind"),
    [
        ("v2-8", 8, 4, 1, "TPU v2"),  # Colab's former TPU: 8 cores on 4 chips
        ("v5e-1", 1, 1, 1, "TPU v5 lite"),  # Colab's TPU today
        ("v5e-8", 8, 8, 1, "TPU v5 lite"),
        ("v5e-256", 256, 256, 64, "TPU v5 lite"),  # a multi-host pod slice
        ("v4-16", 16, 8, 2, "TPU v4"),
    ],
)
def test_describe_gives_the_slices_abstract_devices(name, devices, chips, hosts, kind):
    tpu = topology.describe(name)
    assert (len(tpu.devices), tpu.chips, tpu.hosts, tpu.device_kind) == (devices, chips, hosts, kind)
    assert tpu.devices_per_chip == devices // chips
    fp = tpu.fingerprint()
    assert fp["libtpu"] == topology.libtpu_version() and fp["topology"] == topology.resolve_name(name)[0]


@libtpu
def test_a_topology_libtpu_refuses_is_one_line():
    with pytest.raises(HarnessError, match=r"libtpu cannot describe v5e:3x3 \(INVALID_ARGUMENT"):
        topology.describe("v5e:3x3")


def test_missing_libtpu_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu → ImportError, as without the package
    assert topology.libtpu_version() is None
    with pytest.raises(HarnessError, match=r"needs libtpu, which is not installed: pip install 'harness\[tpu\]'"):
        topology.describe("v5e-8")


def _cli(args: list[str], hide_libtpu: bool = False) -> subprocess.CompletedProcess:
    """The harness command in a fresh process, JAX free to look for every platform (as a user's would be)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "ALLOW_MULTIPLE_LIBTPU_LOAD")}
    prelude = "import sys; sys.modules['libtpu'] = None; " if hide_libtpu else "import sys; "
    code = prelude + f"from harness.cli import main; sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_harness_compile_without_libtpu_is_one_line_exit_2():
    result = _cli(["compile", "--topology", "v5e-8"], hide_libtpu=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "harness: error: compiling for a TPU slice needs libtpu, which is not installed: "
        "pip install 'harness[tpu]' (libtpu, about 700 MB)"
    ]


@libtpu
def test_libtpu_start_up_warnings_never_reach_the_terminal():
    """On a host without TPUs libtpu prints warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES and an
    INVALID_ARGUMENT line at start-up, then works: a harness command shows none of them."""
    bench = ["bench", "--models", "mlp_tiny", "--batch-sizes", "8", "--data", "synthetic", "--windows", "5"]
    for args in (
        ["compile", "--topology", "v5e-1", "--config", "smoke", "--config.batch_size=8"],
        [*bench, "--no-ledger"],
    ):
        result = _cli(args)
        assert result.returncode == 0, result.stderr
        for noise in ("INVALID_ARGUMENT", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "InitGoogle"):
            assert noise not in result.stderr, result.stderr


@libtpu
def test_several_processes_compile_at_once():
    """libtpu takes a host-wide lock file unless told otherwise: a second process compiling at the same time must
    not fail with 'multi-process lockfile' on a host without TPUs."""
    code = "from harness import topology; topology.describe('v5e-1'); print('loaded', flush=True); input()"
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "loaded"  # the first process holds libtpu now
        result = _cli(["compile", "--topology", "v5e-1", "--config", "smoke", "--config.batch_size=8"])
        assert result.returncode == 0, result.stderr
    finally:
        holder.kill()
        holder.wait()


def _pci(root, devices: dict) -> None:
    for name, (vendor, device) in devices.items():
        (root / name).mkdir(parents=True)
        (root / name / "vendor").write_text(vendor + "\n")
        (root / name / "device").write_text(device + "\n")


def test_a_google_network_card_is_no_tpu_but_a_tpu_chip_is(tmp_path):
    pci, dev = tmp_path / "pci", tmp_path / "dev"
    dev.mkdir()
    _pci(pci, {"0000:00:04.0": ("0x1ae0", "0x0042")})  # gVNIC: Google's vendor id, no TPU
    assert not topology.has_tpu_chips(pci, dev)
    _pci(pci, {"0000:00:05.0": ("0x1ae0", "0x0063")})  # a TPU v5e chip
    assert topology.has_tpu_chips(pci, dev)
    (dev / "accel0").touch()  # a TPU v2-v4 VM's driver
    assert topology.has_tpu_chips(tmp_path / "none", dev)
