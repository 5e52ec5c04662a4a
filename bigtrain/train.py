"""What `deepspeed bigtrain/train.py [--recipe R.yaml] [key=value ...]` runs: one training stage.

Only a launcher shim; the trainer is the `bigtrain.train` package beside this file (Python imports the
package, not this script, for `bigtrain.train`) and the argument handling is `bigtrain.cli.train`.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script, sys.path[0] is bigtrain/ itself: put the repository root first instead
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    from bigtrain.cli.train import main

    raise SystemExit(main())
