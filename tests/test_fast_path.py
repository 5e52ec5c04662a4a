"""The GPU fast path's options each give the loss and gradients of the plain path (docs/performance.md):
the chunked cross-entropy, liger's kernels (CUDA only), torch.compile, every-n-layers checkpointing, the
mask without position ids, the ZeRO stage choice and config, the prefetching batch loader, and (2 ranks)
ZeRO-3 with leaf layers and the head weight as an external parameter against stage 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers.masking_utils
from transformers import AutoTokenizer

from bigtrain.config import Recipe, TrainConfig
from bigtrain.data.sampler import GlobalBatchSampler
from bigtrain.errors import BigtrainError
from bigtrain.model import BigTrainForCausalLM, kernels
from bigtrain.model.kernels import liger_installed, resolve_kernels
from bigtrain.model.loss import IGNORE_INDEX, chunked_cross_entropy, mm_returns, plain_cross_entropy, resolve_loss
from bigtrain.train.batches import DeviceBatches
from bigtrain.train.distributed import World
from bigtrain.train.ds_config import build_ds_config
from bigtrain.train.fast_path import resolve_fast_path
from bigtrain.train.zero_stage import choose_zero_stage, model_state_bytes
from tests.growth_helpers import llama_3_2_1b_config, tiny_config
from tests.trainer_runs import REPO, launch, losses, run_ranks, tiny_overrides

GIB = 2**30
needs_liger = pytest.mark.skipif(
    not (torch.cuda.is_available() and liger_installed()), reason="liger-kernel runs on CUDA only (pip install .[gpu])"
)


@pytest.fixture(scope="module")
def tokens(tokenizer_dir: Path, sample_text: str) -> torch.Tensor:
    """Two rows of 48 real tokens."""
    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(sample_text)["input_ids"]
    return torch.tensor(ids[: 2 * 48]).view(2, 48)


def loss_and_grads(model: torch.nn.Module, batch: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a: tuple[float, dict], b: tuple[float, dict], tol: float = 1e-5) -> None:
    assert a[0] == pytest.approx(b[0], rel=tol, abs=tol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=tol, atol=tol, msg=name)


def tiny_model(**over: object) -> BigTrainForCausalLM:
    torch.manual_seed(0)
    return BigTrainForCausalLM(tiny_config(tie_word_embeddings=True, **over))


# --- loss ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_cross_entropy_equals_plain(chunk: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    targets[::6] = IGNORE_INDEX
    results = []
    for fn in (plain_cross_entropy, lambda h, w, y: chunked_cross_entropy(h, w, y, chunk)):
        hidden.grad = weight.grad = None
        loss = fn(hidden, weight, targets)
        (0.25 * loss).backward()  # a scaled loss (gradient accumulation) scales both gradients
        results.append((loss.item(), {"hidden": hidden.grad.clone(), "weight": weight.grad.clone()}))
    assert_same(results[0], results[1], tol=1e-10)
    with torch.no_grad():  # evaluation: the loss alone
        assert chunked_cross_entropy(hidden, weight, targets, chunk).item() == pytest.approx(results[0][0])


@pytest.mark.parametrize("chunk", [7, 64])
def test_chunked_cross_entropy_bf16_matches_plain(chunk: int) -> None:
    """In bf16 the chunked loss's GEMMs run in bf16 (fp32 accumulation; add_weight_grad): its loss and
    gradients are as close to the float64 truth, for the same bf16 inputs, as the plain bf16 loss's."""
    torch.manual_seed(0)
    hidden = torch.randn(300, 64, dtype=torch.bfloat16, requires_grad=True)
    weight = (0.1 * torch.randn(500, 64)).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 500, (300,))
    targets[::6] = IGNORE_INDEX
    runs = {}
    for name, fn, h, w in (
        ("truth", plain_cross_entropy, hidden.detach().double(), weight.detach().double()),
        ("plain", plain_cross_entropy, hidden, weight),
        ("chunked", lambda h, w, y: chunked_cross_entropy(h, w, y, chunk), hidden, weight),
    ):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss = fn(h, w, targets)
        loss.backward()
        assert h.grad.dtype == h.dtype and w.grad.dtype == w.dtype
        runs[name] = (loss.item(), h.grad.double(), w.grad.double())
    truth = runs["truth"]
    for name in ("plain", "chunked"):
        loss, gh, gw = runs[name]
        assert loss == pytest.approx(truth[0], rel=1e-2), name
        for got, want in ((gh, truth[1]), (gw, truth[2])):  # bf16: 8 bits of mantissa
            assert (got - want).abs().max() <= 2**-7 * want.abs().max(), name
    chunked, plain = runs["chunked"], runs["plain"]
    assert (chunked[2] - plain[2]).abs().max() <= 2**-6 * plain[2].abs().max()
    # CPU has no fp32-returning bf16 GEMM: the bf16 result is summed in fp32 (CUDA asks mm for fp32)
    assert not mm_returns(torch.device("cpu"), torch.bfloat16, torch.float32)


def test_model_loss_and_grads_chunked_equal_plain(tokens: torch.Tensor) -> None:
    model = tiny_model()
    plain = loss_and_grads(model, tokens)
    model.select_loss("chunked")
    chunked = loss_and_grads(model, tokens)
    assert_same(plain, chunked)
    assert model(input_ids=tokens, labels=tokens).logits is None  # the logits were never built
    assert model(input_ids=tokens).logits.shape == (2, 48, 32000)  # inference still returns them


@needs_liger
def test_liger_kernels_and_fused_loss_equal_torch(tokens: torch.Tensor) -> None:
    model = tiny_model().cuda()
    batch = tokens.cuda()
    reference = loss_and_grads(model, batch)
    model.select_kernels("liger")
    assert_same(reference, loss_and_grads(model, batch), tol=1e-4)
    model.select_loss("fused")
    assert_same(reference, loss_and_grads(model, batch), tol=1e-4)


# --- compile, checkpointing, mask ------------------------------------------------------------------


@pytest.mark.parametrize(("cuda", "installed"), [(False, False), (False, True), (True, False), (True, True)])
def test_kernels_and_loss_resolve_by_one_rule(monkeypatch: pytest.MonkeyPatch, cuda: bool, installed: bool) -> None:
    """auto picks liger's option only with CUDA and liger-kernel; asking for it without is one line."""
    monkeypatch.setattr(kernels.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(kernels, "liger_installed", lambda: installed)
    both = cuda and installed
    assert resolve_kernels("auto") == ("liger" if both else "torch")
    assert resolve_loss("auto") == ("fused" if both else "chunked")
    assert resolve_kernels("torch") == "torch" and resolve_loss("plain") == "plain"
    assert resolve_kernels("auto", compiled=True) == "torch"  # liger's Triton functions would split the graph
    for resolve, key, liger, other in (
        (resolve_kernels, "train.kernels", "liger", "torch"),
        (resolve_loss, "train.loss", "fused", "chunked"),
    ):
        if both:
            assert resolve(liger) == liger
        else:
            why = "needs a CUDA device" if not cuda else "needs liger-kernel"
            # the model layer names the value; the trainer, which read it from the recipe, adds the key
            with pytest.raises(BigtrainError, match=f"^{liger} {why}"):
                resolve(liger)
            spec = TrainConfig(**{key.removeprefix("train."): liger})
            with pytest.raises(BigtrainError, match=f"^{key}: {liger} {why}"):
                resolve_fast_path(spec)
        with pytest.raises(BigtrainError, match=f"^unknown 'triton' \\(auto, .*{other}"):
            resolve("triton")


def test_compiled_layers_equal_eager(tokens: torch.Tensor) -> None:
    model = tiny_model(num_hidden_layers=2)
    model.select_loss("chunked")
    eager = loss_and_grads(model, tokens)
    for layer in model.model.layers:
        layer.block = torch.compile(layer.block)
    assert_same(eager, loss_and_grads(model, tokens), tol=1e-4)


def test_checkpoint_every_n_layers_equal_grads(tokens: torch.Tensor) -> None:
    model = tiny_model(num_hidden_layers=3)
    model.train()
    full = loss_and_grads(model, tokens)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=2)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False, True]
    assert_same(full, loss_and_grads(model, tokens))


def test_mask_builder_gets_no_position_ids(tokens: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers checks given position ids for packed sequences with a host-side .all(); ours never are."""
    calls: list[object] = []
    real = transformers.masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        transformers.masking_utils, "find_packed_sequence_indices", lambda p: calls.append(p) or real(p)
    )
    model = tiny_model(num_hidden_layers=1)
    with torch.no_grad():
        default = model(input_ids=tokens).logits
        assert calls == []
        explicit = model(input_ids=tokens, position_ids=torch.arange(48)[None]).logits
        assert len(calls) == 1  # given position ids still reach the mask builder (packing)
    torch.testing.assert_close(default, explicit)


# --- ZeRO stage and config -------------------------------------------------------------------------


def llama_1b_params() -> int:
    from bigtrain.model.counting import total_params

    return total_params(llama_3_2_1b_config())


def test_zero_stage_auto_picks_the_fastest_stage_that_fits() -> None:
    params = llama_1b_params()
    assert params == pytest.approx(1.236e9, rel=1e-3)
    bf16 = Recipe.model_validate({"train": {"precision": "bf16"}})
    # one 80 GB GPU, bf16: stage 1 (never 0: BF16_Optimizer's fp32 master and gradient sums), 1.24B x 20 B
    # = 23 GiB (bf16 weights and grads, the fp32 gradient buffer, master and moments) fit in half
    stage, why = choose_zero_stage(bf16, 1, params, 80 * GIB)
    assert stage == 1 and "stage 1" in why and "fp32" in why
    # fp32 has no such problem: no ZeRO at all, 1.24B x 16 B = 18 GiB
    fp32 = Recipe.model_validate({"train": {"precision": "fp32"}})
    assert choose_zero_stage(fp32, 1, params, 80 * GIB)[0] == 0
    # a 24 GB GPU: stage 1 on one (23 GiB) does not fit in half; 8 GPUs at stage 1 do (2.3 + 2.3 + 4.6 + 1.7 GiB)
    assert choose_zero_stage(bf16, 8, params, 24 * GIB)[0] == 1
    assert choose_zero_stage(bf16, 1, params, 24 * GIB)[0] == 3
    assert model_state_bytes(params, 3, 8, "bf16") == int(params * 18 / 8)  # fp32 gradient partitions
    # no CUDA: the template's stage (CPU runs exercise ZeRO-3); offload/custom templates keep theirs
    assert choose_zero_stage(bf16, 1, params, None)[0] == 3
    offload = Recipe.model_validate({"train": {"ds_config": "zero3_offload"}})
    assert choose_zero_stage(offload, 1, params, 80 * GIB)[0] == 3
    assert choose_zero_stage(Recipe.model_validate({"train": {"zero_stage": 2}}), 1, params, 80 * GIB)[0] == 2
    assert choose_zero_stage(bf16, 1, params, 80 * GIB, resumed_stage=3)[0] == 3


def test_bf16_configs_accumulate_gradients_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto + bf16 on a GPU that fits the 1B: stage 1 with grad_accum_dtype fp32 (BF16_Optimizer); every bf16
    ZeRO stage sums in fp32; stage 0 (refuses it) and fp32 runs get no data_types."""
    import bigtrain.train.fast_path as fast_path

    monkeypatch.setattr(fast_path, "device_memory_bytes", lambda: 80 * GIB)
    bf16 = Recipe.model_validate({"train": {"precision": "bf16"}})
    ds_config, choice = fast_path.plan_engine(bf16, 1, llama_3_2_1b_config())
    assert choice["zero_stage"] == 1 and ds_config["zero_optimization"]["stage"] == 1
    assert ds_config["data_types"] == {"grad_accum_dtype": "fp32"} and ds_config["bf16"]["enabled"] is True
    for stage in (2, 3):
        assert build_ds_config(bf16, 8, 2048, zero_stage=stage)["data_types"]["grad_accum_dtype"] == "fp32"
    assert "data_types" not in build_ds_config(bf16, 1, 2048, zero_stage=0)
    fp32 = Recipe.model_validate({"train": {"precision": "fp32"}})
    assert "data_types" not in build_ds_config(fp32, 1, 2048, zero_stage=1)


def test_ds_config_per_stage() -> None:
    recipe = Recipe.model_validate({"train": {"micro_batch_size": 2}})
    z3 = build_ds_config(recipe, 16, 2048, zero_stage=3, layer_params=60_000_000, local_world_size=8)[
        "zero_optimization"
    ]
    assert z3["stage"] == 3 and z3["memory_efficient_linear"] is False
    assert z3["reduce_bucket_size"] >= 60_000_000 and z3["stage3_prefetch_bucket_size"] >= 60_000_000
    assert z3["zero_hpz_partition_size"] == 8  # two nodes: hierarchical partitioning within a node
    one_node = build_ds_config(recipe, 8, 2048, zero_stage=3, local_world_size=8)["zero_optimization"]
    assert "zero_hpz_partition_size" not in one_node
    z0 = build_ds_config(recipe, 1, 2048, zero_stage=0)["zero_optimization"]
    assert z0["stage"] == 0 and not [k for k in z0 if k.startswith("stage3_")]
    offload = Recipe.model_validate({"train": {"ds_config": "zero3_offload"}})
    with pytest.raises(BigtrainError, match="offload_param needs 3"):
        build_ds_config(offload, 1, 64, zero_stage=2)


# --- batches ---------------------------------------------------------------------------------------


class FakeRange:
    """Stands in for a token file: row i is [i, i, ...] (the loader only calls batch())."""

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(indices))[:, None].repeat(1, 4)


def test_device_batches_equal_direct_reads_in_order() -> None:
    sampler = GlobalBatchSampler(64, 8, seed=3)
    world = World(rank=1, local_rank=1, size=2)
    loader = DeviceBatches(FakeRange(), sampler, world, micro_batch_size=2, accum=2, total_steps=3, device="cpu")
    for step in range(1, 3):  # resumed at step 1: the first read has nothing prefetched
        for micro in range(2):
            want = sampler.micro_batch_indices(step, micro, 1, 2, 2)
            assert loader.get(step, micro)[:, 0].tolist() == list(want)
    assert loader._ahead is None  # nothing read past the last step


# --- 2 ranks: ZeRO-3 fast path against stage 0 -----------------------------------------------------


@pytest.mark.slow
def test_zero3_leaf_layers_and_external_head_equal_stage0(tmp_path: Path, tokens: torch.Tensor) -> None:
    """Real 2-rank DeepSpeed: ZeRO-3 (leaf layers, chunked loss reading the head as an external parameter)
    gives stage 0's plain-loss loss and full gradients on the same batch."""
    torch.save(tokens, tmp_path / "tokens.pt")
    out = tmp_path / "result.json"
    run_ranks(REPO / "tests" / "fast_path_ranks.py", [str(tmp_path / "tokens.pt"), str(out)], 2)
    r = json.loads(out.read_text())
    assert r["leaf_layers"] == 2 and r["zero3_stage"] == 3 and r["stage0_stage"] == 0
    assert r["zero3_loss"] == pytest.approx(r["stage0_loss"], rel=1e-5)
    assert r["grads_compared"] == r["params"] and r["max_grad_diff"] < 1e-5


# --- bf16 engine: RoPE and gradient sums in fp32 ---------------------------------------------------


@pytest.mark.slow
def test_bf16_engine_keeps_rope_fp32_and_sums_grads_in_fp32(tmp_path: Path) -> None:
    """Real bf16 DeepSpeed on one rank, as the trainer builds it: zero.Init (stage 3) leaves inv_freq bf16;
    restore_fp32_rope gives back the exact fp32 table at stages 3, 2 and 1, and it stays fp32 through a step.
    The same engines sum micro-batch gradients in fp32 (stage 1: BF16_Optimizer)."""
    out = tmp_path / "bf16.json"
    run_ranks(REPO / "tests" / "bf16_engine_ranks.py", [str(out)], 1)
    for stage, r in json.loads(out.read_text()).items():
        assert r["bf16"] and r["stage"] == int(stage) and r["restored"] == 1, r
        if stage == "3":  # the bug this guards against, still there upstream
            assert r["before"] == "torch.bfloat16", r
        assert r["after"] == r["after_step"] == "torch.float32", r
        assert r["max_diff"] == 0.0 and r["loss_finite"], r
        # micro-batch gradients summed in fp32; stage 1 through BF16_Optimizer
        assert r["grad_accum_dtype"] == "fp32" and r["accum_buffer_dtype"] == "torch.float32", r
    stage1 = json.loads(out.read_text())["1"]
    assert stage1["optimizer"] == "BF16_Optimizer"
    # its state on one rank, over the same flat (padded) groups as the bf16 weights: bf16 p.grad 2 B plus
    # fp32 gradient sums 4 B, fp32 master + moments 12 B per element (run.json's memory, state_bytes.py)
    mem = stage1["memory"]
    assert mem["grad_bytes"] == 3 * mem["param_bytes"] and mem["optimizer_state_bytes"] == 6 * mem["param_bytes"]


@pytest.mark.slow
def test_bf16_stage1_saves_and_resumes(demo_data: Path, tmp_path: Path) -> None:
    """bf16 at stage 1 (BF16_Optimizer, what auto picks on one GPU) through the trainer: a finished 2-step run
    given 4 steps resumes from its checkpoint and trains on; run.json counts the fp32 master and gradients."""
    out = tmp_path / "run"
    extra = {"train.precision": "bf16", "train.zero_stage": 1, "train.eval_every": 0, "train.export": "false"}
    launch(tiny_overrides(demo_data, out, tmp_path / "cache", **extra, **{"train.max_steps": 2}), ranks=1)
    launch(tiny_overrides(demo_data, out, tmp_path / "cache", **extra, **{"train.max_steps": 4}), ranks=1)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["step"] == 4 and info["resumed_from"].endswith("step_2")
    assert info["zero_stage"] == 1 and info["precision"] == "bf16"
    mem = info["memory"]
    assert mem["grad_bytes"] == 3 * mem["param_bytes"] and mem["optimizer_state_bytes"] == 6 * mem["param_bytes"]
    curve = losses(out)
    assert sorted(curve) == [1, 2, 3, 4] and curve[4] < curve[1]
