"""bigtrain/train.py with a rank that dies half-way through a checkpoint save (for test_reliability).

`BIGTRAIN_KILL_SAVE=RANK:STEP`: that rank, when DeepSpeed writes its optimizer shard for `step_<STEP>`,
writes the first half of the file and then SIGKILLs itself: a rank lost mid-save, at a known point,
through the real launcher, trainer and save code (only `torch.save` on that rank is wrapped).
"""

import io
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

rank, step = os.environ["BIGTRAIN_KILL_SAVE"].split(":")
real_save = torch.save


def dying_save(obj, f, *args, **kwargs):
    if os.environ.get("RANK") == rank and f".tmp-step_{step}" in str(f) and "optim_states" in str(f):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buf.getvalue()[: buf.tell() // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = dying_save

if __name__ == "__main__":
    from bigtrain.cli.train import main

    raise SystemExit(main())
