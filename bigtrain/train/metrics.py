"""What a run reports: metrics.jsonl (one JSON object per logged step), TensorBoard, run.json, MFU, memory."""

from __future__ import annotations

import json
import platform
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class PeakSpec:
    """A device's dense (no 2:4 sparsity) bf16 tensor-core peak, from its vendor's datasheet."""

    device: str  # which variant the detection settled on, e.g. "H100 SXM"
    tflops: float


# (pattern on the device name, variant, dense bf16 TFLOP/s), first match wins: specific forms before
# bare family names. Names as torch.cuda.get_device_name() gives them, e.g. "NVIDIA H100 80GB HBM3" (SXM),
# "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "AMD Instinct MI300X".
PEAK_RULES: list[tuple[str, str, float]] = [
    (r"GH200", "GH200", 989.0),
    (r"GB200", "GB200", 2500.0),
    (r"H200.*NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"H100.*NVL", "H100 NVL", 835.0),
    (r"H100.*PCI", "H100 PCIe", 756.0),
    (r"H100.*(SXM|HBM3)", "H100 SXM", 989.0),
    (r"H800.*PCI", "H800 PCIe", 756.0),
    (r"H800", "H800 SXM", 989.0),
    (r"H20\b", "H20", 148.0),
    (r"B200", "B200", 2250.0),
    (r"B100", "B100", 1750.0),
    (r"A100", "A100", 312.0),  # SXM4 and PCIe, 40 and 80 GB: the same tensor-core peak
    (r"A800", "A800", 312.0),
    (r"A30\b", "A30", 165.0),
    (r"L40S", "L40S", 362.0),
    (r"L40\b", "L40", 181.0),
    (r"A10G", "A10G", 70.0),  # AWS's A10 variant runs at lower clocks than the A10's 125
    (r"A10\b", "A10", 125.0),
    (r"L4\b", "L4", 121.0),
    (r"V100", "V100", 125.0),  # fp16: V100 has no bf16
    (r"MI300X|MI325X", "MI300X", 1307.0),
    (r"MI300A", "MI300A", 980.0),
    (r"MI250X", "MI250X", 383.0),
]
H100_PCIE_SMS = 114  # SXM and NVL have 132; NVL carries 94 GiB against SXM's 80
NVL_MIN_MEMORY_GIB = 90


def peak_for(name: str, sm_count: int | None = None, memory_bytes: int | None = None) -> PeakSpec | None:
    """The peak for a device name; a bare "H100" is told apart by its SM count and memory."""
    for pattern, device, tflops in PEAK_RULES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return PeakSpec(device, tflops)
    if re.search(r"H100", name, flags=re.IGNORECASE):
        if sm_count is not None and sm_count <= H100_PCIE_SMS:
            return PeakSpec("H100 PCIe", 756.0)
        if memory_bytes is not None and memory_bytes >= NVL_MIN_MEMORY_GIB * 2**30:
            return PeakSpec("H100 NVL", 835.0)
        return PeakSpec("H100 SXM", 989.0)
    return None


def detect_peak() -> PeakSpec | None:
    """The current CUDA/ROCm device's peak; None on CPU or an unknown device (set train.peak_tflops)."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return peak_for(props.name, props.multi_processor_count, props.total_memory)


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' dense peak (None: peak unknown)."""
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12 * devices) if peak_tflops else None


class IntervalTimer:
    """Wall time of a logging interval. Call `lap` right after the host sync that ends an interval (the read
    of its loss): that one clock read ends this interval and starts the next, so the device's tail of every
    interval is counted and no time falls between intervals."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def lap(self) -> tuple[float, int]:
        """(seconds, steps) since the previous lap (or the start); starts the next interval."""
        now = self._clock()
        elapsed, steps = now - self._start, self.steps
        self._start, self.steps = now, 0
        return elapsed, steps


def peak_memory_bytes() -> int:
    """Accelerator: max allocated by torch. CPU: the process's peak resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_reserved_bytes() -> int | None:
    """Accelerator: max reserved by torch's caching allocator (what the device really had to hold). CPU: None."""
    return int(torch.cuda.max_memory_reserved()) if torch.cuda.is_available() else None


def versions() -> dict[str, str]:
    import deepspeed
    import transformers

    import bigtrain

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "bigtrain": getattr(bigtrain, "__version__", "0"),
    }


class MetricsLogger:
    """Rank 0 writes; other ranks hold a disabled logger."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path = output_dir / "metrics.jsonl"
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(output_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines past the checkpoint so the file reads as one run."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        assert self._tb is not None
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self._tb.add_scalar(key, value, record["step"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def write_run_info(path: Path, info: dict[str, Any]) -> None:
    info = {**info, "versions": versions(), "argv": sys.argv}
    path.write_text(json.dumps(info, indent=2, default=str))
