"""What every CLI shares: one clear line and exit code 2 for bad input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from bigtrain.errors import BigtrainError

USER_ERRORS = (BigtrainError, FileNotFoundError, FileExistsError)  # RecipeError is BigtrainError


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(body: Callable[[], int | None]) -> NoReturn:
    """Run `body`; a user error becomes `error: <one line>` on stderr and exit code 2."""
    try:
        code = body()
    except USER_ERRORS as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise SystemExit(code or 0)
