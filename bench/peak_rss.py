"""Run a Python script as __main__ and write its peak memory and the device it ran on to a JSON file.

python bench/peak_rss.py OUT.json SCRIPT.py [ARGS...]

Peak GPU memory is what PyTorch allocated on the GPU (None when the run used no GPU).
"""

import json
import os
import platform
import resource
import runpy
import sys


def device_and_gpu_peak() -> tuple[str, float | None]:
    """Called after the script: torch is imported by then, and CUDA is initialised only if it was used."""
    cores = f"{os.cpu_count()} CPU cores"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"{torch.cuda.get_device_name(0)}, {cores}", torch.cuda.max_memory_allocated() / 2**20
    return f"{platform.machine()}, {cores}, no GPU", None


def main() -> None:
    out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        device, gpu_peak = device_and_gpu_peak()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(out, "w") as handle:
            json.dump({"peak_rss_mb": rss, "peak_gpu_mb": gpu_peak, "device": device}, handle)


if __name__ == "__main__":
    main()
