"""Run the gradsurg CLI and SIGKILL it at a chosen point (used by test_resume.py).

    python tests/kill_points.py POINT N -- run recipe.yaml --output DIR [--resume]

POINT is where the process kills itself, the N-th time it gets there:
- `step`:   at the start of a training step (after N-1 steps finished, before the N-th's update);
- `commit`: inside a checkpoint save, after its files are written, before the rename commits it;
- `eval`:   at the start of the evaluation after training;
- `none`:   never (an uninterrupted run through the same entry point).
SIGKILL cannot be caught, so nothing gets a chance to clean up, as in a real crash.
"""

from __future__ import annotations

import os
import signal
import sys


def kill_on_call(owner: object, attribute: str, nth: int) -> None:
    original = getattr(owner, attribute)
    calls = 0

    def wrapper(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def main() -> None:
    point, nth = sys.argv[1], int(sys.argv[2])
    assert sys.argv[3] == "--"
    from gradsurg import checkpoint
    from gradsurg.cli import app
    from gradsurg.programs.multiexit_glue import recipe

    if point == "step":
        kill_on_call(recipe, "group_losses", nth)
    elif point == "commit":
        kill_on_call(checkpoint, "_rename", nth)
    elif point == "eval":
        kill_on_call(recipe, "collect_exit_logits", nth)
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}")
    app(sys.argv[4:])


if __name__ == "__main__":
    main()
