"""What a run reports: metrics.jsonl (one JSON object per logged step), TensorBoard, run.json, MFU, memory."""

from __future__ import annotations

import json
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak TFLOP/s per device, by a substring of the CUDA device name.
PEAK_TFLOPS_BY_GPU = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "V100": 125.0,
}


def detect_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS_BY_GPU.items() if k in name), None)


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' dense peak (None: peak unknown)."""
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12 * devices) if peak_tflops else None


def peak_memory_bytes() -> int:
    """Accelerator: max allocated by torch. CPU: the process's peak resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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
