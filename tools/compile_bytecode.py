"""Compile the bytecode of what bigtrain runs: every bigtrain module and the libraries they import, lazily
ones included. tools/setup.sh installs with `pip --no-compile`, since pip compiles all ~17,000 installed
modules on one core (~70 s, more than the install itself) while a run imports ~5,000; this imports those
with bytecode writing on (also where PYTHONDONTWRITEBYTECODE is set, in which case nothing would ever be
cached). Whatever else is imported later compiles then, as usual."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import time

# imported inside functions (a run, the report, evaluation, the tests), not by bigtrain's module imports
LAZY = (
    "deepspeed.runtime.zero.stage3",
    "deepspeed.runtime.zero.partition_parameters",
    "deepspeed.runtime.bf16_optimizer",
    "deepspeed.runtime.fp16.fused_optimizer",
    "deepspeed.utils.zero_to_fp32",
    "deepspeed.checkpoint",
    "transformers.models.llama.modeling_llama",
    "transformers.models.mixtral.modeling_mixtral",
    "transformers.trainer",
    "peft",
    "datasets",
    "lm_eval",
    "lm_eval.evaluator",
    "matplotlib.pyplot",
    "torch.utils.tensorboard",
    "torch._dynamo",
    "torch._inductor.compile_fx",
    "safetensors.torch",
    "pytest",
    "xdist",
)


def main() -> int:
    sys.dont_write_bytecode = False
    start = time.perf_counter()
    import bigtrain

    failed = []
    names = [m.name for m in pkgutil.walk_packages(bigtrain.__path__, "bigtrain.")]
    for name in [*names, *LAZY]:
        if name in LAZY and importlib.util.find_spec(name.split(".")[0]) is None:
            continue  # an optional extra that is not installed
        try:
            importlib.import_module(name)
        except Exception as e:  # a module that cannot load here (e.g. CUDA only) compiles when it is used
            failed.append(f"{name} ({type(e).__name__})")
    print(
        f"compile_bytecode: {len(sys.modules)} modules loaded in {time.perf_counter() - start:.0f} s"
        + (f"; not loadable here: {', '.join(failed)}" if failed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
