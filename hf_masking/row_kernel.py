"""One compiled call per layer for the sparse corrections of every mask in a mixed-mask batch.

In a mixed batch each mask's rows compute the shared product minus a correction over that mask's
masked-out weights (see `fixed_mask`). With torch's own sparse products that is one call per mask
per layer, and at short rows (classification requests, generation steps) those calls cost more
than the product itself. ``csrc/row_corrections.cpp`` does all masks of a layer in one call: each
group of rows is transposed once, and each masked-out weight multiplies 16 rows with one vector FMA.

The kernel is built on first use with torch's C++ extension loader (a C++ compiler with OpenMP, and
ninja), for the CPU it runs on, and cached on disk by torch (``TORCH_EXTENSIONS_DIR``). Without a
compiler, or with ``HF_MASKING_ROW_KERNEL=0``, layers use torch's per-mask sparse products: the same
results up to float rounding, only slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "row_corrections.cpp"
ENV_SWITCH = "HF_MASKING_ROW_KERNEL"
# Rows (tokens) of one mask up to which a mixed batch takes the kernel rather than one dense product
# per mask (a copy of W ⊙ M and a full product): on a 2-core AVX-512 CPU, 11 masks at 8% masked out,
# the two cost the same near 128 rows per mask for 384x384 to 3072x768 layers and the dense product
# wins from 192 (`python bench/mixed_batch.py --group_sweep`).
MAX_GROUP_TOKENS = 160

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "failed": None}


def enabled() -> bool:
    """Whether the environment allows the compiled kernel (``HF_MASKING_ROW_KERNEL=0`` turns it off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_tag() -> str:
    """The build's name carries the CPU's instruction sets: it is compiled with -march=native, and a
    cache directory shared between machines must never hand one CPU another's build."""
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags += next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags += platform.processor()
    digest = hashlib.sha256()
    digest.update(flags.encode())
    digest.update(SOURCE.read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:12]


def _find_ninja() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` package (a dependency) puts it in the environment's bin
    folder, which is not on PATH when a virtual environment's python runs without being activated."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load() -> Any | None:
    """The compiled module, built on the first call; None where it cannot be (the reason is warned once)."""
    if _state["module"] is not None or _state["failed"] is not None or not enabled():
        return _state["module"]
    with _lock:
        if _state["module"] is None and _state["failed"] is None:
            try:
                from torch.utils import cpp_extension

                _find_ninja()
                _state["module"] = cpp_extension.load(
                    name=f"hf_masking_rows_{_cpu_tag()}",
                    sources=[str(SOURCE)],
                    extra_cflags=["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as error:  # no compiler, no ninja, no OpenMP: the torch path serves
                lines = str(error).strip().splitlines()
                _state["failed"] = f"{type(error).__name__}: {lines[-1] if lines else ''}"
                warnings.warn(
                    "hf-masking could not build its mixed-batch kernel, so mixed-mask batches use torch's per-mask "
                    f"sparse products (same results, slower at short rows). Reason: {_state['failed']}. It needs a "
                    f"C++ compiler with OpenMP and ninja; set {ENV_SWITCH}=0 to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _state["module"]


def available() -> bool:
    """Whether mixed batches on this machine take the compiled kernel (builds it on the first call)."""
    return load() is not None


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel can compute this layer's corrections: fp32 on the CPU, positions within int32."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and weight.numel() < 2**31
        and enabled()
    )


def subtract_corrections(
    y: torch.Tensor,
    x: torch.Tensor,
    starts: list[int],
    rows: list[tuple[torch.Tensor, torch.Tensor]],
    values: list[torch.Tensor],
) -> bool:
    """y[t] -= x[t] (W ⊙ P_g)ᵀ for the rows t in [starts[g], starts[g + 1]) of each group g, whose masked-out
    positions P_g are ``rows[g]`` (`DecodedMask.row_positions`: row pointers, positions by output row) and
    W there ``values[g]`` (`DecodedMask.row_values`).

    `y` ([tokens, out]) and `x` ([tokens, in]) are contiguous fp32 CPU tensors; `y` is written in place.
    Returns False, writing nothing, where the kernel is not available: the caller computes it itself.
    """
    module = load()
    if module is None:
        return False
    module.subtract_row_corrections(
        y,
        x,
        torch.tensor(starts, dtype=torch.long),
        [pointers for pointers, _ in rows],
        [positions for _, positions in rows],
        values,
    )
    return True
