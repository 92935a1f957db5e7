"""Datasheet peaks: dense FLOP/s per dtype and memory bandwidth of a device, each with its source.

Accelerators come from a table of the chips users have (TPU v4, v5e, v5p, v6e; NVIDIA T4, L4, A100, H100, H200),
matched on ``device.device_kind``. A CPU's peak is cores × nominal clock × FLOP per cycle per core of its
**microarchitecture** (vendor, family and model from ``/proc/cpuinfo``), not of its instruction-set flags: AMD Zen 4
runs AVX-512 on 256-bit units (32 float32 FLOP/cycle, like Zen 3), while Zen 5 servers and Xeon Scalable parts
with two AVX-512 FMA units reach 64. Anything not in these tables is ``(None, reason)``, shown as "n/a": never a
guess. What a machine demonstrably reaches is measured apart (:mod:`harness.ceiling`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

T = 1e12
JAX_PRECISION = "https://docs.jax.dev/en/latest/_autosummary/jax.lax.Precision.html"


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip: dense peaks, bandwidth and memory per chip (None: the chip has no such unit or its
    vendor publishes none). A TPU v2/v3 chip (and a v4/v5p chip outside megacore mode) is two JAX devices, one per
    TensorCore: callers divide by the devices per chip."""

    name: str
    pattern: str  # regular expression searched in the lower-case device kind
    bfloat16: float | None
    float32: float | None  # what XLA's default precision runs float32 matmuls at (TF32 where the chip has it)
    bandwidth: float | None  # HBM/GDDR bytes per second
    source: str
    memory: float | None = None  # HBM bytes


NVIDIA_NOTE = "dense figures (the datasheets' starred values assume 2:4 sparsity and are halved here)"
GIB = 2**30
TPU_V2_PAPER = (
    "Jouppi et al., 'A Domain-Specific Supercomputer for Training Deep Neural Networks', CACM 63(7), 2020, "
    "https://dl.acm.org/doi/pdf/10.1145/3360307 (Table 3: TPUv2 46 TFLOPS, 16 GiB HBM, 700 GB/s per chip)"
)
CHIPS = (  # more specific patterns first
    Chip("TPU v2", r"tpu v2$", 46 * T, 46 * T, 700e9, TPU_V2_PAPER, 16 * GIB),
    Chip("TPU v3", r"tpu v3$", 123 * T, 123 * T, 900e9, "https://cloud.google.com/tpu/docs/v3", 32 * GIB),
    Chip("TPU v5e", r"tpu v5 ?(lite|e)\b", 197 * T, 197 * T, 819e9, "https://cloud.google.com/tpu/docs/v5e", 16 * GIB),
    Chip("TPU v5p", r"tpu v5p?$", 459 * T, 459 * T, 2765e9, "https://cloud.google.com/tpu/docs/v5p", 95 * GIB),
    Chip("TPU v6e", r"tpu v6 ?(lite|e)\b", 918 * T, 918 * T, 1638e9, "https://cloud.google.com/tpu/docs/v6e", 32 * GIB),
    Chip("TPU v4", r"tpu v4$", 275 * T, 275 * T, 1200e9, "https://cloud.google.com/tpu/docs/v4", 32 * GIB),
    Chip(
        "NVIDIA T4",  # Turing: no bfloat16 or TF32 tensor cores; float32 on the CUDA cores
        r"\bt4\b",
        None,
        8.1 * T,
        320e9,
        "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
    ),
    Chip(
        "NVIDIA L4", r"\bl4\b", 121 * T, 60 * T, 300e9, f"https://www.nvidia.com/en-us/data-center/l4/, {NVIDIA_NOTE}"
    ),
    *(
        Chip(
            f"NVIDIA A100 {variant}",
            pattern,
            312 * T,
            156 * T,
            bandwidth,
            "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
            f"nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf, {NVIDIA_NOTE}",
        )
        for variant, pattern, bandwidth in (
            ("80GB PCIe", r"a100.*(80gb.*pcie|pcie.*80gb)", 1935e9),
            ("80GB SXM", r"a100.*80gb", 2039e9),
            ("40GB", r"a100", 1555e9),
        )
    ),
    Chip(
        "NVIDIA H100 PCIe",
        r"h100.*pcie",
        756.5 * T,
        378 * T,
        2.0e12,
        f"https://www.nvidia.com/en-us/data-center/h100/, {NVIDIA_NOTE}",
    ),
    Chip(
        "NVIDIA H100 NVL",
        r"h100.*nvl",
        835.5 * T,
        417.5 * T,
        3.9e12,
        f"https://www.nvidia.com/en-us/data-center/h100/, {NVIDIA_NOTE}",
    ),
    Chip(
        "NVIDIA H100 SXM",
        r"h100",
        989.4 * T,
        494.7 * T,
        3.35e12,
        "https://www.nvidia.com/en-us/data-center/h100/ and the NVIDIA H100 Tensor Core GPU Architecture whitepaper "
        "(https://resources.nvidia.com/en-us-tensor-core), dense BF16 989.4 and TF32 494.7 TFLOPS",
    ),
    Chip(
        "NVIDIA H200 NVL",
        r"h200.*nvl",
        835.5 * T,
        417.5 * T,
        4.8e12,
        f"https://www.nvidia.com/en-us/data-center/h200/, {NVIDIA_NOTE}",
    ),
    Chip(
        "NVIDIA H200 SXM",
        r"h200",
        989.4 * T,
        494.7 * T,
        4.8e12,
        f"https://www.nvidia.com/en-us/data-center/h200/, {NVIDIA_NOTE}",
    ),
)
FLOAT32_NOTE = {
    "TPU": f"float32 matmuls at XLA's default precision run as one bfloat16 MXU pass ({JAX_PRECISION})",
    "NVIDIA": f"float32 matmuls at XLA's default precision use the TF32 tensor cores ({JAX_PRECISION})",
}


def chip(device_kind: str) -> Chip | None:
    """The table's entry for a device kind (e.g. ``NVIDIA H100 80GB HBM3``, ``TPU v5 lite``), or None."""
    kind = device_kind.lower().strip()
    return next((c for c in CHIPS if re.search(c.pattern, kind)), None)


# ----------------------------------------------------------------------------------------------------------- CPUs

AMD_DOCS = "https://www.amd.com/en/search/documentation/hub.html"
INTEL_MANUAL = (
    "Intel 64 and IA-32 Architectures Optimization Reference Manual (order no. 248966), "
    "https://www.intel.com/content/www/us/en/developer/articles/technical/intel-sdm.html"
)
ARK = "Intel ARK, '# of AVX-512 FMA Units' of each Xeon Scalable SKU, https://ark.intel.com"


@dataclasses.dataclass(frozen=True)
class Core:
    """A CPU core's float32 FLOP per cycle (FMA units × float32 lanes × 2), with what it is and the source."""

    name: str
    float32_per_cycle: int
    source: str


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPU, and the cores this process may use."""

    name: str = "unknown"
    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    mhz: float | None = None
    cores: int = 1
    flags: tuple[str, ...] = ()

    FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    """The first processor's fields of a /proc/cpuinfo text (flags: only the vector/matrix features we read)."""

    def field(key: str) -> str | None:
        match = re.search(rf"^{key}\s*:\s*(.*)$", text, re.M)
        return match.group(1).strip() if match else None

    def number(key: str, cast):
        try:
            return cast(field(key))
        except (TypeError, ValueError):
            return None

    flags = (field("flags") or "").split()
    return CpuInfo(
        name=field("model name") or "unknown",
        vendor=field("vendor_id"),
        family=number("cpu family", int),
        model=number("model", int),
        mhz=number("cpu MHz", float),
        cores=cores,
        flags=tuple(f for f in CpuInfo.FEATURES if f in flags),
    )


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's :class:`CpuInfo` (an unreadable file: name, vendor, family, model and clock unknown)."""
    cores = len(os.sched_getaffinity(0))
    try:
        return parse_cpuinfo(path.read_text(encoding="utf-8"), cores)
    except OSError:
        return CpuInfo(cores=cores)


def _amd(family: int, model: int) -> Core | None:
    if family == 23:  # Zen/Zen+ (models below 30h): 128-bit FMA pipes; Zen 2 widened them to 256 bits
        zen2 = model >= 0x30
        name, per_cycle, pub = ("Zen 2", 32, "56305") if zen2 else ("Zen", 16, "55723")
        return Core(name, per_cycle, f"two {per_cycle * 8}-bit FMA pipes; AMD Family 17h optimization guide {pub}")
    if family == 25:  # Zen 3 and Zen 4: two 256-bit FMA pipes; Zen 4 splits AVX-512 over two cycles
        return Core(
            "Zen 3/Zen 4",
            32,
            f"two 256-bit FMA pipes (Zen 4 runs AVX-512 on them in two passes); AMD optimization guides 56665 "
            f"(Zen 3) and 57647 (Zen 4), {AMD_DOCS}",
        )
    if family == 26:  # Zen 5: 512-bit FMA pipes, except the mobile parts (Strix Point, Krackan Point)
        if model <= 0x1F or 0x40 <= model <= 0x4F or 0x70 <= model <= 0x7F:
            return Core("Zen 5", 64, f"two 512-bit FMA pipes; AMD Zen5 optimization guide 58455, {AMD_DOCS}")
        if 0x20 <= model <= 0x2F or 0x60 <= model <= 0x6F:
            return Core(
                "Zen 5 (mobile)",
                32,
                "256-bit FP datapath on Strix/Krackan Point; "
                "https://chipsandcheese.com/2024/08/10/amds-strix-point-zen-5-hits-mobile",
            )
    return None


INTEL_2_FMA_512 = {0x6A: "Ice Lake-SP", 0x8F: "Sapphire Rapids", 0xCF: "Emerald Rapids", 0xAD: "Granite Rapids"}
INTEL_AMX = {0x8F, 0xCF, 0xAD}
INTEL_256 = {  # two 256-bit FMA ports (AVX2), or one 512-bit FMA on the client AVX-512 parts: 32 either way
    **dict.fromkeys((0x3C, 0x3F, 0x45, 0x46), "Haswell"),
    **dict.fromkeys((0x3D, 0x47, 0x4F, 0x56), "Broadwell"),
    **dict.fromkeys((0x4E, 0x5E, 0x8E, 0x9E, 0xA5, 0xA6), "Skylake client (through Comet Lake)"),
    **dict.fromkeys((0x7D, 0x7E, 0x8C, 0x8D, 0xA7), "Ice Lake/Tiger Lake/Rocket Lake client"),
}


def _intel(family: int, model: int, name: str) -> Core | None:
    if family != 6:
        return None
    if model in INTEL_2_FMA_512:
        return Core(INTEL_2_FMA_512[model], 64, f"two AVX-512 FMA units; {INTEL_MANUAL}")
    if model in INTEL_256:
        return Core(INTEL_256[model], 32, f"two 256-bit FMA ports (or one 512-bit); {INTEL_MANUAL}")
    if model == 0x55:  # Skylake-SP/Cascade Lake: one or two AVX-512 FMA units by SKU, told only by the SKU name
        if re.search(r"platinum|gold 6\d{3}|gold 5122", name, re.I):
            return Core("Skylake-SP/Cascade Lake", 64, f"two AVX-512 FMA units; {ARK}")
        if re.search(r"silver|bronze|gold 5\d{3}", name, re.I):
            return Core("Skylake-SP/Cascade Lake", 32, f"one AVX-512 FMA unit; {ARK}")
    return None  # hybrid client parts (P and E cores differ), Atom-class, newer or unnamed SKUs: unknown


def cpu_core(info: CpuInfo) -> Core | None:
    """The core's microarchitecture and float32 FLOP per cycle, or None when unknown."""
    if info.family is None or info.model is None:
        return None
    if info.vendor == "AuthenticAMD":
        return _amd(info.family, info.model)
    if info.vendor == "GenuineIntel":
        return _intel(info.family, info.model, info.name)
    return None


def cpu_per_cycle(info: CpuInfo, dtype: str) -> tuple[int, str, str] | None:
    """(FLOP per cycle per core for ``dtype``, the unit, its source), or None when the core is unknown. bfloat16:
    AMX tiles where present (1024), else twice float32 with the AVX-512 BF16 dot product (two products per float32
    lane), else the float32 rate (converted and multiplied in float32)."""
    core = cpu_core(info)
    if core is None:
        return None
    per_cycle, unit = core.float32_per_cycle, f"{core.name} vector units"
    if dtype == "bfloat16" and "amx_bf16" in info.flags and info.vendor == "GenuineIntel" and info.model in INTEL_AMX:
        return 1024, f"{core.name} AMX", f"AMX TMUL: 1024 bfloat16 FLOP/cycle/core; {INTEL_MANUAL}"
    if dtype == "bfloat16" and "avx512_bf16" in info.flags:
        per_cycle, unit = 2 * per_cycle, f"{core.name} AVX-512 BF16"
    return per_cycle, unit, core.source


def cpu_peak(dtype: str, info: CpuInfo | None = None) -> tuple[float | None, str]:
    """The whole CPU's peak FLOP/s for ``dtype`` (cores × nominal clock × FLOP/cycle/core) and how it was made;
    ``(None, why)`` for an unknown microarchitecture or clock."""
    info = info or cpu_info()
    rate = cpu_per_cycle(info, dtype)
    if rate is None:
        return None, f"n/a: no FLOP/cycle known for {info.vendor} family {info.family} model {info.model} ({info.name})"
    if not info.mhz:
        return None, "n/a: /proc/cpuinfo gives no clock"
    per_cycle, unit, source = rate
    peak = info.cores * info.mhz * 1e6 * per_cycle
    return (
        peak,
        f"computed: {info.cores} cores × {info.mhz:.0f} MHz × {per_cycle} {dtype} FLOP/cycle ({unit}; {source})",
    )


# ------------------------------------------------------------------------------------------------------- lookups


def peak_flops(device_kind: str, dtype: str, info: CpuInfo | None = None) -> tuple[float | None, str]:
    """(dense peak FLOP/s per chip for ``dtype``, its source), or ``(None, why)`` when unknown. For CPUs, the
    whole CPU (all fake CPU devices share its cores)."""
    if device_kind.lower() == "cpu":
        return cpu_peak(dtype, info)
    entry = chip(device_kind)
    if entry is None:
        return None, f"n/a: {device_kind!r} is not in the peak table"
    peak = {"bfloat16": entry.bfloat16, "float32": entry.float32}.get(dtype)
    if peak is None:
        return None, f"n/a: {entry.name} has no published dense {dtype} peak ({entry.source})"
    note = FLOAT32_NOTE[entry.name.split()[0]] if dtype == "float32" and entry.name != "NVIDIA T4" else ""
    return peak, f"{entry.name} datasheet, dense {dtype}: {entry.source}" + (f"; {note}" if note else "")


def peak_bandwidth(device_kind: str) -> tuple[float | None, str]:
    """(memory bandwidth in bytes/s per chip, its source), or ``(None, why)``; CPUs: none (the measured copy
    of :mod:`harness.ceiling` is what counts there)."""
    entry = None if device_kind.lower() == "cpu" else chip(device_kind)
    if entry is None or entry.bandwidth is None:
        return None, f"n/a: no datasheet memory bandwidth for {device_kind!r}"
    return entry.bandwidth, f"{entry.name} datasheet: {entry.source}"


def memory_bytes(device_kind: str) -> tuple[float | None, str]:
    """(HBM bytes per chip, its source), or ``(None, why)`` where the table has none."""
    entry = None if device_kind.lower() == "cpu" else chip(device_kind)
    if entry is None or entry.memory is None:
        return None, f"n/a: no datasheet memory size for {device_kind!r}"
    return entry.memory, f"{entry.name} datasheet: {entry.source}"
