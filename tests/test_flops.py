"""FLOPs/token under both conventions, MFU, and peak FLOP/s detection from device names (no GPU needed)."""

from __future__ import annotations

import pytest

from bigtrain.model import BigTrainConfig
from bigtrain.model.counting import palm_flops_per_token, total_params, train_flops_per_token
from bigtrain.train.metrics import PEAK_RULES, IntervalTimer, mfu, peak_for
from tests.growth_helpers import llama_3_2_1b_config as llama_3_2_1b

GIB = 2**30


def test_target_shape_params_and_flops_by_hand() -> None:
    cfg = llama_3_2_1b()
    # per layer: q,o 2048x2048 each; k,v 2048x512 each; gate/up/down 2048x8192; two norms
    layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048
    n = 16 * layer + 128256 * 2048 + 2048  # tied embedding once, final norm
    assert n == 1_235_814_400 == total_params(cfg)
    # bigtrain: 6 x (blocks + head: the tied embedding counts once, as the head matmul; the final norm
    # is left out) + causal-halved attention 6*T*(H*Q) per layer
    bigtrain = 6 * (16 * layer + 128256 * 2048) + 16 * 6 * 2048 * 2048
    assert train_flops_per_token(cfg, 2048) == bigtrain == 7_817_527_296
    assert f"{bigtrain / 1e9:.3g}" == "7.82"
    # PaLM: 6N + 12 L H Q T = 6 * 1,235,814,400 + 12 * 16 * 32 * 64 * 2048
    palm = 6 * n + 12 * 16 * 32 * 64 * 2048
    assert palm_flops_per_token(cfg, 2048) == palm == 8_220_192_768
    assert f"{palm / 1e9:.3g}" == "8.22"


def test_palm_sums_per_layer_heads() -> None:
    cfg = BigTrainConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        head_dim=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        layer_num_attention_heads=[2, 6],
        layer_num_key_value_heads=[2, 2],
    )
    assert palm_flops_per_token(cfg, 100) == 6 * total_params(cfg) + 12 * 100 * 32 * (2 + 6)
    assert train_flops_per_token(cfg, 100) - 6 * (total_params(cfg) - 1000 * 128 - 128) == 6 * 100 * 32 * 8


def test_mfu_at_the_issue_target() -> None:
    # 60k tokens/s on one H100 SXM under the PaLM convention is ~50% MFU
    assert mfu(8.22e9, 60_000, 989.0, 1) == pytest.approx(0.4987, abs=1e-4)
    assert mfu(8.22e9, 60_000, 989.0, 8) == pytest.approx(0.4987 / 8, abs=1e-4)
    assert mfu(8.22e9, 60_000, None, 1) is None


@pytest.mark.parametrize(
    ("name", "sms", "memory", "device", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 132, 80 * GIB, "H100 SXM", 989.0),
        ("NVIDIA H100 PCIe", 114, 80 * GIB, "H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 132, 94 * GIB, "H100 NVL", 835.0),
        ("NVIDIA H100", 114, 80 * GIB, "H100 PCIe", 756.0),  # bare name: told apart by SMs ...
        ("NVIDIA H100", 132, 94 * GIB, "H100 NVL", 835.0),  # ... and memory
        ("NVIDIA H100", 132, 80 * GIB, "H100 SXM", 989.0),
        ("NVIDIA H200", 132, 141 * GIB, "H200 SXM", 989.0),
        ("NVIDIA H200 NVL", 132, 141 * GIB, "H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 132, 96 * GIB, "GH200", 989.0),
        ("NVIDIA H800", 132, 80 * GIB, "H800 SXM", 989.0),
        ("NVIDIA H20", 78, 96 * GIB, "H20", 148.0),
        ("NVIDIA A100-SXM4-80GB", 108, 80 * GIB, "A100", 312.0),
        ("NVIDIA A100-PCIE-40GB", 108, 40 * GIB, "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", 108, 80 * GIB, "A100", 312.0),
        ("NVIDIA B200", 148, 180 * GIB, "B200", 2250.0),
        ("NVIDIA GB200", 152, 186 * GIB, "GB200", 2500.0),
        ("NVIDIA L40S", 142, 45 * GIB, "L40S", 362.0),
        ("NVIDIA L4", 58, 22 * GIB, "L4", 121.0),
        ("NVIDIA A10G", 80, 22 * GIB, "A10G", 70.0),
        ("NVIDIA A10", 72, 22 * GIB, "A10", 125.0),
        ("AMD Instinct MI300X", 304, 192 * GIB, "MI300X", 1307.0),
    ],
)
def test_peak_from_device_name(name: str, sms: int, memory: int, device: str, tflops: float) -> None:
    peak = peak_for(name, sms, memory)
    assert peak is not None and (peak.device, peak.tflops) == (device, tflops)


def test_unknown_device_has_no_peak() -> None:
    assert peak_for("NVIDIA GeForce GTX 1080", 20, 8 * GIB) is None
    assert peak_for("cpu") is None
    assert all(t > 0 for _, _, t in PEAK_RULES)


def test_interval_timer_one_clock_read_ends_one_interval_and_starts_the_next() -> None:
    """Intervals tile the run: their seconds sum to the whole, each lap reads the clock once, so the time
    spent in (and after) the host sync that ends an interval is in some interval, never in none."""
    reads: list[float] = []
    ticks = iter([10.0, 10.5, 12.0, 12.25, 15.0])

    def clock() -> float:
        reads.append(next(ticks))
        return reads[-1]

    timer = IntervalTimer(clock)
    for _ in range(3):
        timer.step()
    assert timer.lap() == (0.5, 3)  # 10.0 -> 10.5
    timer.step()
    assert timer.lap() == (1.5, 1)  # starts at the very read that ended the first: 10.5 -> 12.0
    assert timer.lap() == (0.25, 0)
    timer.step()
    timer.step()
    assert timer.lap() == (2.75, 2)
    assert reads == [10.0, 10.5, 12.0, 12.25, 15.0]  # one read per lap, none between intervals
    assert reads[-1] - reads[0] == 0.5 + 1.5 + 0.25 + 2.75
