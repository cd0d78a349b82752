"""What every pyinfer command line shares: one-line errors with exit code 2, defaults in
``--help``, ``--version``, and the argument types that check files and ranges up front.

    ap = cli_util.ArgumentParser(prog="python -m pyinfer.perplexity", description=...)
    ap.add_argument("model", type=cli_util.existing_file)
    return cli_util.run(lambda: _main(ap.parse_args(argv)), ap.prog)

Exit codes: 0 done; 2 the user's input was wrong (a bad argument, a missing or unreadable
file, a model the command cannot use: ``OSError`` and ``ValueError``, which the library's
own load and option errors derive from); 1 the run failed for another reason the library
reports (``RuntimeError``, e.g. no GPU); 130 interrupted. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from . import __version__

EXIT_USAGE = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and appends each option's default to its help
    (only where there is one worth showing: not None, False or a suppressed value; 0 is shown)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default is None or default is False or default == argparse.SUPPRESS
                or action.nargs == 0 or not action.option_strings and action.nargs in (None, 1)):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with defaults in --help, a --version flag, and errors on one line:
    ``PROG: error: MESSAGE (see PROG --help)`` and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"pyinfer {__version__}")

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def existing_file(path: str) -> str:
    """argparse type: a path to a readable regular file (a missing file, a directory or a named
    pipe is refused before anything is loaded)."""
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {path}: permission denied")
    return path


def existing_dir(path: str) -> str:
    """argparse type: a path to an existing directory."""
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"no such directory: {path}")
    return path


def bounded(kind: Callable, lo=None, hi=None, name: str = "value", lo_open: bool = False,
            hi_open: bool = False) -> Callable:
    """argparse type: `kind(text)` within [lo, hi] (lo excluded with lo_open, hi with hi_open)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        if below or above or v != v:      # v != v: NaN, inside no range
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(
                f"{name} must be in {left}{'' if lo is None else lo}, {'' if hi is None else hi}{right}, got {text}")
        return v
    parse.__name__ = kind.__name__
    return parse


positive_int = bounded(int, 1, name="value")
non_negative_int = bounded(int, 0, name="value")


def run(body: Callable[[], int], prog: str) -> int:
    """Runs a command's body and turns the user's errors into one line on stderr."""
    try:
        return body() or 0
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        return 1


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return " ".join(str(e).split()) or type(e).__name__
