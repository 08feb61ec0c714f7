"""Errors that reach the user as one clear paragraph instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input (missing data, wrong shapes, config typos): the message says what to do."""

# Written into a run folder when its stage refused its input (the message), removed when the run starts again:
# `relreward report` lists such a run as failed, with the reason.
ERROR_FILE = "error.txt"


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` for the scripts: a number of ``kind`` that is ``>= minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
        return value

    return parse


def run_script(main: Callable[[], object]) -> None:
    """Run a script's ``main`` as the CLI runs a stage: bad input (:class:`UserError`) and the machine's failures
    (:class:`OSError`) are one paragraph and exit code 2; anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        from relreward_cli.cli import environment_error

        print(f"error: {environment_error(err)}", file=sys.stderr)
        sys.exit(2)
