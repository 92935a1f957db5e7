"""Datasheet peaks: the accelerator table and the CPU peak by microarchitecture from fixed /proc/cpuinfo texts."""

import pytest

from harness import peaks

ZEN4_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
stepping\t: 1
cpu MHz\t\t: 2400.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512vl
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
cpu MHz\t\t: 2700.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_bf16 amx_bf16 amx_tile
"""
ZEN5_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
cpu MHz\t\t: 2596.122
flags\t\t: fpu sse2 fma avx2 avx512f avx512_bf16
"""
ZEN5_MOBILE = ZEN5_EPYC.replace("model\t\t: 2\n", "model\t\t: 36\n").replace("AMD EPYC", "AMD Ryzen AI 9 HX 370")
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"


def info(text: str) -> peaks.CpuInfo:
    return peaks.parse_cpuinfo(text, cores=2)


@pytest.mark.parametrize(
    ("text", "dtype", "per_cycle", "core"),
    [
        (ZEN4_EPYC, "float32", 32, "Zen 3/Zen 4"),  # AVX-512 on 256-bit units: not 64
        (ZEN4_EPYC, "bfloat16", 64, "Zen 3/Zen 4"),
        (SAPPHIRE_RAPIDS, "float32", 64, "Sapphire Rapids"),
        (SAPPHIRE_RAPIDS, "bfloat16", 1024, "Sapphire Rapids"),  # AMX
        (ZEN5_EPYC, "float32", 64, "Zen 5"),
        (ZEN5_EPYC, "bfloat16", 128, "Zen 5"),
        (ZEN5_MOBILE, "float32", 32, "Zen 5 (mobile)"),
    ],
)
def test_cpu_peak_by_microarchitecture(text, dtype, per_cycle, core):
    cpu = info(text)
    peak, source = peaks.cpu_peak(dtype, cpu)
    assert peaks.cpu_core(cpu).name == core
    assert peak == 2 * cpu.mhz * 1e6 * per_cycle
    assert source.startswith(f"computed: 2 cores × {cpu.mhz:.0f} MHz × {per_cycle} {dtype} FLOP/cycle ({core}")
    assert "optimization" in source.lower() or "http" in source  # every figure names where it comes from


@pytest.mark.parametrize(
    ("name", "model", "per_cycle"),
    [
        ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", 85, 64),  # Skylake-SP: two FMA units on Gold 6xxx
        ("Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz", 85, 32),  # one
        ("Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", 60, 32),  # Haswell, AVX2 only
    ],
)
def test_intel_by_model_and_sku(name, model, per_cycle):
    text = SAPPHIRE_RAPIDS.replace("model\t\t: 143", f"model\t\t: {model}").replace(
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", name
    )
    assert peaks.cpu_peak("float32", info(text))[0] == 2 * 2700e6 * per_cycle


@pytest.mark.parametrize(
    "text",
    [
        ARM,  # no vendor, family or clock
        ZEN5_EPYC.replace("cpu family\t: 26", "cpu family\t: 27"),  # a family not in the table
        ZEN5_EPYC.replace("model\t\t: 2\n", "model\t\t: 144\n"),  # a Zen 5 model not in the table
        SAPPHIRE_RAPIDS.replace("model\t\t: 143", "model\t\t: 151"),  # Alder Lake: P and E cores differ
        SAPPHIRE_RAPIDS.replace("model\t\t: 143", "model\t\t: 85").replace("Platinum 8481C ", ""),  # SKU unnamed
        ZEN5_EPYC.replace("cpu MHz\t\t: 2596.122\n", ""),  # known core, no clock
        "",  # an empty (or unreadable) file
    ],
)
def test_unknown_cpus_have_no_peak(text):
    peak, why = peaks.cpu_peak("float32", info(text))
    assert peak is None and why.startswith("n/a: ")
    assert peaks.peak_flops("cpu", "bfloat16", info(text))[0] is None


def test_an_unreadable_cpuinfo(tmp_path):
    cpu = peaks.cpu_info(tmp_path / "missing")
    assert cpu.cores >= 1 and cpu.mhz is None and cpu.family is None
    assert peaks.cpu_peak("float32", cpu)[0] is None


def test_cpuinfo_fields():
    cpu = info(ZEN5_EPYC)
    assert (cpu.vendor, cpu.family, cpu.model, cpu.name) == ("AuthenticAMD", 26, 2, "AMD EPYC")
    assert cpu.flags == ("avx2", "fma", "avx512f", "avx512_bf16") and cpu.mhz == 2596.122


@pytest.mark.parametrize(
    ("kind", "dtype", "peak", "bandwidth"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4e12, 3.35e12),  # SXM; dense, not the sparse 1979
        ("NVIDIA H100 80GB HBM3", "float32", 494.7e12, 3.35e12),  # TF32 dense
        ("NVIDIA H100 PCIe", "bfloat16", 756.5e12, 2.0e12),
        ("NVIDIA H200", "bfloat16", 989.4e12, 4.8e12),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12, 1555e9),
        ("NVIDIA A100-SXM4-80GB", "float32", 156e12, 2039e9),
        ("NVIDIA A100 80GB PCIe", "float32", 156e12, 1935e9),
        ("NVIDIA L4", "bfloat16", 121e12, 300e9),
        ("Tesla T4", "float32", 8.1e12, 320e9),
        ("TPU v4", "bfloat16", 275e12, 1200e9),
        ("TPU v5 lite", "bfloat16", 197e12, 819e9),
        ("TPU v5", "bfloat16", 459e12, 2765e9),
        ("TPU v5p", "bfloat16", 459e12, 2765e9),
        ("TPU v6 lite", "bfloat16", 918e12, 1638e9),
        ("TPU v2", "bfloat16", 46e12, 700e9),  # Colab's former v2-8: per chip (two devices)
        ("TPU v3", "float32", 123e12, 900e9),
    ],
)
def test_accelerator_table(kind, dtype, peak, bandwidth):
    value, source = peaks.peak_flops(kind, dtype)
    assert value == peak and "https://" in source
    assert peaks.peak_bandwidth(kind)[0] == bandwidth


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [
        ("Tesla T4", "bfloat16"),  # Turing has no bfloat16 tensor cores
        ("NVIDIA L40S", "bfloat16"),  # not in the table (and not an L4)
        ("TPU v7x", "bfloat16"),  # not in the table
        ("weird accelerator", "float32"),
        ("NVIDIA H100 80GB HBM3", "float16"),
    ],
)
def test_unknown_accelerators_are_na(kind, dtype):
    value, why = peaks.peak_flops(kind, dtype)
    assert value is None and why.startswith("n/a: ")


def test_cpus_have_no_datasheet_bandwidth():
    assert peaks.peak_bandwidth("cpu")[0] is None and peaks.peak_bandwidth("TPU v7x")[0] is None


@pytest.mark.parametrize(
    ("kind", "gib"),
    [("TPU v2", 16), ("TPU v3", 32), ("TPU v4", 32), ("TPU v5 lite", 16), ("TPU v5", 95), ("TPU v6 lite", 32)],
)
def test_every_tpu_has_its_hbm_per_chip_with_a_source(kind, gib):
    memory, source = peaks.memory_bytes(kind)
    assert memory == gib * 2**30 and "https://" in source


def test_memory_is_na_where_the_table_has_none():
    assert peaks.memory_bytes("cpu")[0] is None and peaks.memory_bytes("TPU v7x")[1].startswith("n/a: ")
