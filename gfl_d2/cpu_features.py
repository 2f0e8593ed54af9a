"""
What the CPU can compute natively, read from the kernel's ``/proc/cpuinfo``:
the instruction-set flags that decide whether bfloat16 inference is worth
running (:func:`native_bf16_flags`, :func:`require_native_bf16`) and a
summary for benchmark reports (:func:`describe_cpu`).

Native bfloat16 arithmetic means dot-product instructions on bfloat16 inputs:
x86's AVX512-BF16 (``avx512_bf16``) or AMX (``amx_bf16``), Arm's FEAT_BF16
(``bf16``). Without them PyTorch still runs bfloat16 convolutions, by
converting to float32 around float32 arithmetic: slower than float32, with
bfloat16's loss of precision. ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is no
substitute: it answers True for any AVX-512 CPU, where oneDNN emulates
bfloat16 that way.
"""

import functools
import os
import platform
from typing import Dict, FrozenSet, List, Optional

import torch

from .errors import UsageError

__all__ = [
    "BF16_FLAGS",
    "REPORTED_FLAGS",
    "cpu_flags",
    "cpu_model_name",
    "native_bf16_flags",
    "require_native_bf16",
    "describe_cpu",
]

# instruction-set flags with bfloat16 dot products (x86: /proc/cpuinfo "flags"; Arm: "Features")
BF16_FLAGS = {"x86": ("avx512_bf16", "amx_bf16"), "arm": ("bf16",)}
# the flags a benchmark report lists: the vector units that set a convolution's throughput
REPORTED_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    """The text of /proc/cpuinfo, "" where there is none (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _first_field(cpuinfo: str, keys) -> Optional[str]:
    """The value of the first line of ``cpuinfo`` whose key is one of ``keys``."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Optional[str] = None) -> FrozenSet[str]:
    """
    The first processor's flags in ``cpuinfo`` (default: this machine's
    /proc/cpuinfo): x86's "flags" line or Arm's "Features" line; empty if neither.
    """
    value = _first_field(_proc_cpuinfo() if cpuinfo is None else cpuinfo, ("flags", "Features"))
    return frozenset(value.split()) if value else frozenset()


def cpu_model_name(cpuinfo: Optional[str] = None) -> str:
    """The CPU's name ("model name" on x86), else the platform's processor string."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    name = _first_field(text, ("model name", "Model name", "Hardware"))
    return name or platform.processor() or platform.machine()


def _architecture(flags: FrozenSet[str]) -> str:
    """ "arm" for Arm's feature names (asimd, fp), else "x86"."""
    return "arm" if {"asimd", "fp"} & flags and "sse2" not in flags else "x86"


def native_bf16_flags(flags: Optional[FrozenSet[str]] = None) -> List[str]:
    """
    Which of the bfloat16 dot-product flags ``flags`` (default: this CPU's)
    has; empty: bfloat16 would be emulated. Without /proc/cpuinfo, torch's
    own CPU probe decides (x86 only).
    """
    if flags is None:
        flags = cpu_flags()
        if not flags:  # no /proc/cpuinfo: ask torch's cpuinfo library
            # (AMX tiles have come with AMX-BF16 on every CPU that has them)
            probe = {
                "avx512_bf16": "_is_avx512_bf16_supported",
                "amx_bf16": "_is_amx_tile_supported",
            }
            return [f for f, fn in probe.items() if getattr(torch.cpu, fn, lambda: False)()]
    return [f for f in BF16_FLAGS[_architecture(flags)] if f in flags]


def require_native_bf16(
    flags: Optional[FrozenSet[str]] = None, what: str = "bfloat16 inference"
) -> None:
    """
    UsageError naming the missing flags unless the CPU (``flags``, default:
    this one's) has bfloat16 dot products.
    """
    if native_bf16_flags(flags):
        return
    name = cpu_model_name() if flags is None else "this CPU"
    flags = cpu_flags() if flags is None else flags
    has = ", ".join(f for f in REPORTED_FLAGS if f in flags) or "none of the vector flags listed"
    raise UsageError(
        f"{what} needs a CPU with bfloat16 arithmetic (flag "
        f"{' or '.join(BF16_FLAGS[_architecture(flags)])}), which {name} lacks (it has: {has}): "
        "PyTorch would emulate bfloat16 with float32 arithmetic and conversions around it: "
        "slower than float32, with bfloat16's loss of precision. Run float32 inference on "
        "this CPU (cpu_inference 'fused', 'frozen' or 'eager')."
    )


def describe_cpu() -> Dict:
    """This CPU for a report: name, cores, torch's threads and vector capability, its flags."""
    flags = cpu_flags()
    return dict(
        model=cpu_model_name(),
        machine=platform.machine(),
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        flags=[f for f in REPORTED_FLAGS if f in flags],
        native_bf16=native_bf16_flags(),
    )
