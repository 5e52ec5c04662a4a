"""Growing fixed tiny checkpoints gives byte-identical outputs: a SHA-256 over each output's
safetensors files, config.json and growth.json (its path fields blanked), recorded once from main
before the operator registry (issue 17) and compared here. A change of any existing operator's
tensors, their order, dtype or the record shows up as a different digest.

To re-record after an *intended* change: `BIGTRAIN_GOLDEN_PRINT=1 pytest -s tests/test_growth_golden.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bigtrain.growth import grow_checkpoint
from tests.growth_helpers import heterogeneous_config, random_model, tiny_config

# name -> (source model, grow_checkpoint keyword arguments)
CASES: dict[str, tuple[str, dict]] = {
    "stack": ("tiny", {"op": "stack", "layers": 6}),
    "interleave": ("tiny", {"op": "interleave", "layers": 5}),
    "step-mean": ("tiny", {"op": "step", "layers": 6}),
    "step-copy": ("tiny", {"op": "step", "layers": 5, "init": "copy"}),
    "step-zero-after-each": ("tiny", {"op": "step", "layers": 7, "init": "zero", "placement": "after-each"}),
    "zero-depth": ("tiny", {"op": "zero-depth", "layers": 5}),
    "zero-depth-after-each": ("tiny", {"op": "zero-depth", "layers": 6, "placement": "after-each"}),
    "random-depth": ("tiny", {"op": "random-depth", "layers": 5, "seed": 3}),
    "net2net": ("tiny", {"op": "net2net", "hidden": 96, "ffn": 144, "heads": 8}),
    "net2net-even": ("tiny", {"op": "net2net", "hidden": 80, "split": "even"}),
    "net2net-noise": ("tiny", {"op": "net2net", "hidden": 80, "ffn": 128, "split": "noise", "noise_std": 0.02}),
    "aki": ("tiny", {"op": "aki", "hidden": 96, "ffn": 192, "heads": 8}),
    "zero-width": ("tiny", {"op": "zero-width", "hidden": 96, "ffn": 128}),
    "random-width": ("tiny", {"op": "random-width", "hidden": 96, "heads": 8}),
    "mixture": ("tiny", {"op": "mixture", "hidden": 96, "ffn": 128}),
    "mixture-copy": ("tiny", {"op": "mixture", "ffn": 128, "init": "copy"}),
    "stack+net2net": ("tiny", {"op": "stack+net2net", "layers": 6, "hidden": 96}),
    "step+mixture": ("tiny", {"op": "step+mixture", "layers": 5, "hidden": 96, "init": "copy"}),
    "zero-depth+aki": ("tiny", {"op": "zero-depth+aki", "layers": 5, "ffn": 192, "split": "even"}),
    "tied-net2net": ("tied", {"op": "net2net", "hidden": 96, "split_spread": 0.3}),
    "tied-interleave+zero-width": ("tied", {"op": "interleave+zero-width", "layers": 4, "hidden": 96}),
    "hetero-net2net": ("hetero", {"op": "net2net", "hidden": 96, "ffn": 192, "heads": 8, "kv_heads": 4}),
    "hetero-step+aki": ("hetero", {"op": "step+aki", "layers": 6, "ffn": 192}),
}

GOLDEN: dict[str, str] = {
    "stack": "72adbf9b492184ce537e342293f8ecad6733a24b90ce6b989b65de34cf99af5a",
    "interleave": "7243989f309099e53e58d46d49574c151fca61703c22d194d4644bc37913d118",
    "step-mean": "49fb939543731f8881d7e12ba49b138b9345a14f55649873a1ccf45e13fb0571",
    "step-copy": "5b67b83c12395b9ae3f211491c3ffc4b98488743467a2becc59e951f105a2fed",
    "step-zero-after-each": "a6e00812f47d43bcb57bc2c60392f766aaabad17806d643e21f0b9589edf9178",
    "zero-depth": "feed5e8afa275a46dbd0238e296c30d735c4882c388eba04a7124f0d0c0298c2",
    "zero-depth-after-each": "f59bb250e50dc5da4810fa00820e003f1162206061371990bd5d45d00427834f",
    "random-depth": "63f518cd5b2f526b54f1859d6958e52f2e845bd3d33d724c95926de357d964bc",
    "net2net": "9aa60bf11bd7821115d532dd3f93053f4b9bae1c0bca538853b7d4e11e1bf9df",
    "net2net-even": "8b35e69ee0c875168a14d33c8ed7708bc9c4f9fc1f85b42455fc507daa563040",
    "net2net-noise": "9b8e74c2e597ce473523084a5e5e50d707cefa48c4e7d2a00249148a83e260c3",
    "aki": "e4b32f865e50f6a7fbbc6132c45dfefccb7f7f3f69a69ee7b3a19a8be4b04ed5",
    "zero-width": "b000e414549e6ad10d8b8281e8db6c3233be035b5f09d57daf769bccfcce8b72",
    "random-width": "786f3a7c4c5e217337bc7274e6e040cdb72953d7da6012c81b68dae04993b62c",
    "mixture": "ca4ffb522db19cd69f6d1dc9ce797643d3e3255b10f9763358438a0092a0cfb6",
    "mixture-copy": "aaa202df4ca93cfa7656dfdeded2f7e1433fb94c18ac26c499453a1107521ad8",
    "stack+net2net": "baf5a8886cef9fd0db7e65fa51d2bd24c8a4257bd495caaab0535f141f1c79bb",
    "step+mixture": "9263c630ae05e368ad683b58c9ed1e6f36519f2e435c331b4511a5055861ff8d",
    "zero-depth+aki": "60dddc89dc29f66e9ec8e52b99c4eb074a1dbcdb954194b09e4c60aba4a4bd43",
    "tied-net2net": "cc048cf3eb478ae77d9bd0b2c541bf815c37e8748a550bf05eb72e43c14f345c",
    "tied-interleave+zero-width": "2dfc80db91df81d4f8421e7042a959cf433eb96ba412a80d5527816c7e716987",
    "hetero-net2net": "b78c66e2621f9568a519302c7546f893c81cb45c329577a1adb905659d76dbee",
    "hetero-step+aki": "5b4d01ec93a0c3a150ea1a422278f3b99022e13935f88a133a4c9793eebb200b",
}


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.iterdir()):
        data = p.read_bytes()
        if p.name == "growth.json":
            rec = json.loads(data)
            rec["source"] = {k: ("" if k in ("path", "weights") else v) for k, v in rec["source"].items()}
            data = json.dumps(rec, sort_keys=True).encode()
        if p.suffix in (".safetensors", ".json"):
            h.update(p.name.encode() + b"\0" + data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden")
    models = {
        "tiny": random_model(tiny_config(vocab_size=512), seed=1),
        "tied": random_model(tiny_config(vocab_size=512, num_hidden_layers=2, tie_word_embeddings=True), seed=2),
        "hetero": random_model(heterogeneous_config(vocab_size=512), seed=3),
    }
    out = {}
    for name, model in models.items():
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_growth_output_is_byte_identical(sources, tmp_path, case):
    source, args = CASES[case]
    out = tmp_path / "out"
    grow_checkpoint(sources[source], out, progress=False, max_shard_bytes=1 << 20, **args)
    got = digest(out)
    if os.environ.get("BIGTRAIN_GOLDEN_PRINT"):
        print(f'    "{case}": "{got}",')
        return
    assert got == GOLDEN[case], f"{case}: grown checkpoint differs from the recorded one"
