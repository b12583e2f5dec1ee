"""Integer-kernel targets: what the deployed onnxruntime kernels can represent.

On x86 CPUs without VNNI, onnxruntime's u8 x s8 integer GEMM/conv kernels
(``vpmaddubsw``) add pairs of products in int16 with saturation: with uint8
activations (up to 255) and int8 weights, 2 * 255 * 127 overflows.  Weight
codes within -64..63 (7 bits) keep every pair below 32767, so the kernels
compute exactly what the fake-quant graph computes.  ARM (sdot/udot) and
VNNI/AMX CPUs accumulate in int32 and need no such limit.
"""
from __future__ import annotations

import platform
from typing import Optional

KERNELS = ("auto", "avx2", "vnni", "arm", "none")


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_kernel() -> str:
    m = platform.machine().lower()
    if m in ("x86_64", "amd64", "i686", "x86"):
        flags = cpu_flags()
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"}:
            return "vnni"
        return "avx2"
    if m.startswith(("arm", "aarch64")):
        return "arm"
    return "none"


def weight_range_bits(kernel: str, w_bits: int) -> Optional[int]:
    """Weight code width the kernel needs (None: the full ``w_bits``)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel '{kernel}' is not one of {', '.join(KERNELS)}")
    k = detect_kernel() if kernel == "auto" else kernel
    if k == "avx2" and w_bits > 7:
        return 7
    return None
