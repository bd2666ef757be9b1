"""What this CPU can do, as far as our kernels care: the x86 features that change speed or integer results.

Integer MatMul/Conv kernels multiply uint8 activations by int8 weights. With VNNI (`vpdpbusd`, AVX512_VNNI or
AVX_VNNI) or AMX the products are summed straight into 32 bits. Without it (AVX2, and AVX-512 before VNNI) they
use `vpmaddubsw`, which adds each pair of u8 x s8 products into a SATURATING 16-bit sum: full-range int8
weights (|w| up to 127) overflow it and the results are silently wrong (onnxruntime issues #6977, #12206,
#3130; NNCF's `OverflowFix`). Weights with |w| <= 64 cannot overflow (2 x 255 x 64 = 32640 <= 32767).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

from .errors import InstantIDWarning

# Features we report with every measurement, in this order.
REPORTED = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
            "amx_int8")  # fmt: skip
# Any one of these sums u8 x s8 products without 16-bit saturation.
SATURATION_FREE_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
# The largest |int8 weight| whose pairwise u8 x s8 products fit a signed 16-bit sum.
SAFE_INT8_WEIGHT = 64


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def isa(self) -> list[str]:
        return [flag for flag in REPORTED if flag in self.flags]

    @property
    def saturation_free_int8(self) -> bool:
        """True where full-range int8 weights give exact integer results (or the CPU is not x86)."""
        if not self.is_x86:
            return True
        return any(flag in self.flags for flag in SATURATION_FREE_INT8)

    @property
    def is_x86(self) -> bool:
        return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")

    def to_dict(self) -> dict:
        return {"cpu": self.model, "isa": self.isa, "saturation_free_int8": self.saturation_free_int8}


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU, from /proc/cpuinfo (Linux); elsewhere the model name only and no flags."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return CpuInfo(model or platform.processor() or platform.machine(), flags or frozenset())


class IntegerKernelWarning(InstantIDWarning):
    """A package's integer kernels may compute wrong results on this CPU."""


def _needs_saturation_free(graph: dict, fmt: str) -> bool:
    """Does this graph's `fmt` file run integer kernels with full-range int8 weights?

    Packages record `integer_kernels` per format since the fix; older int8 packages did not, and their ONNX
    graphs (dynamic int8 MatMul, static QDQ) and OpenVINO hybrid/full graphs (NNCF fixes only the first layer by
    default) used full-range int8 weights. OpenVINO `weights` packages compute in float.
    """
    quantization = graph.get("quantization")
    if not quantization or quantization.get("action", "fp32") == "fp32":
        return False
    recorded = quantization.get("integer_kernels")
    if recorded is not None:
        return fmt in recorded and not recorded[fmt].get("saturation_free", False)
    return fmt == "onnx" or quantization["action"] in ("hybrid", "full")


def package_cpu_warning(manifest: dict, fmt: str, cpu: CpuInfo | None = None) -> str | None:
    """A message naming the graphs that may compute wrong results on `cpu` (default: this one), else None."""
    cpu = cpu or cpu_info()
    if cpu.saturation_free_int8:
        return None
    graphs = sorted(name for name, graph in manifest.get("graphs", {}).items() if _needs_saturation_free(graph, fmt))
    if not graphs:
        return None
    return (
        f"this package's int8 {fmt} graphs ({', '.join(graphs)}) use full-range int8 weights, which need a CPU with "
        f"VNNI ({' or '.join(SATURATION_FREE_INT8)}) to compute exactly; this CPU ({cpu.model}) has none, so their "
        "results may be wrong. re-quantize the package with this version of instantid-edge (`instantid-edge "
        "quantize`), or use its fp32 graphs"
    )
