"""`python -m pyinfer.server --model M.gguf [--n_ctx N] [--host H] [--port P] ...`

Every field of Settings is a `--name` option (llama-cpp-python's names; booleans take
true/false); unset options come from environment variables of the same name, then the
defaults. `--config_file` (or CONFIG_FILE) reads server settings and a list of models from
JSON or YAML instead.

As every pyinfer command line: a bad argument, a missing model or config file or a model
that cannot be loaded is one line on stderr and exit code 2; `--help` shows the defaults;
`--version` prints `pyinfer <version>`. The API key is best given as PYINFER_API_KEY=... or
--api_key_file PATH: a command-line --api_key is visible in `ps` (a warning says so).
`kill -USR1 PID` prints the stack of every thread of a running server to stderr.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import typing
from typing import Any, List, Optional, Tuple

from pydantic import ValidationError

from .. import cli_util
from .settings import ModelSettings, ServerSettings, Settings, load_config_file

PROG = "python -m pyinfer.server"


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "on", "t", "true", "y", "yes"):
        return True
    if t in ("0", "off", "f", "false", "n", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


_parse_bool.__name__ = "bool"


def _base_type(annotation: Any):
    """(scalar type, is a list) of a field annotation such as Optional[List[float]]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return _base_type(next(a for a in args if a is not type(None)))
    if origin in (list, List):
        return _base_type(args[0])[0], True
    if origin is typing.Literal:
        return type(args[0]), False
    return annotation, False


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"


def build_parser() -> argparse.ArgumentParser:
    """The command line. Options default to None (unset: the environment, then the field's
    default), so each help text states the field's default itself."""
    ap = cli_util.ArgumentParser(
        prog=PROG, description="pyinfer: an OpenAI-compatible server for GGUF models "
        "(llama-cpp-python's `python -m llama_cpp.server` options)")
    for name, field in Settings.model_fields.items():
        typ, is_list = _base_type(field.annotation)
        help_text = (field.description or "").replace("%", "%%")
        if field.is_required():
            help_text += " (required, or MODEL=..., or --config_file)"
        elif field.default is not None:
            help_text += f" (default: {_shown(field.default)})"
        if name == "model":
            ap.add_argument(f"--{name}", dest=name, type=cli_util.existing_file,
                            metavar="GGUF", help=help_text)
        elif typ is bool:
            ap.add_argument(f"--{name}", dest=name, type=_parse_bool, metavar="BOOL",
                            help=help_text)
        else:
            ap.add_argument(f"--{name}", dest=name, type=typ if typ in (int, float) else str,
                            nargs="*" if is_list else None, help=help_text)
    ap.add_argument("--config_file", help="JSON or YAML file: server settings and `models` "
                    "(also CONFIG_FILE=...)")
    return ap


def _invalid(e: ValidationError, given=()) -> ValueError:
    """A settings validation error as one short message, naming the option where the value
    came from the command line."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        name = f"argument --{where}" if where in given else where
        parts.append(f"{name}: {err.get('msg')}, got {err.get('input')!r}")
    return ValueError("; ".join(parts))


def _check_models(models: List[ModelSettings]) -> None:
    """Every model file must exist before the server starts (not only the first)."""
    for m in models:
        try:
            cli_util.existing_file(m.model)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"model {m.model_alias or m.model}: {e}") from None


def _settings(args: argparse.Namespace) -> Tuple[ServerSettings, List[ModelSettings]]:
    config_file = args.config_file or os.environ.get("CONFIG_FILE")
    given = {k: v for k, v in vars(args).items() if v is not None and k in Settings.model_fields}
    try:
        if config_file:
            cfg = load_config_file(config_file)
            server = ServerSettings.model_validate(cfg.model_dump(exclude={"models"}))
            return server, cfg.models
        if "model" not in given and not os.environ.get("MODEL"):
            raise ValueError("no model: give --model M.gguf (or MODEL=..., or --config_file)")
        dump = Settings(**given).model_dump()
        return ServerSettings.model_validate(dump), [ModelSettings.model_validate(dump)]
    except ValidationError as e:
        raise _invalid(e, () if config_file else given) from None


def settings_from_args(argv: Optional[List[str]] = None
                       ) -> Tuple[ServerSettings, List[ModelSettings]]:
    """Server and model settings from the command line, environment or config file."""
    return _settings(build_parser().parse_args(argv))


def _serve(args: argparse.Namespace) -> int:
    server_settings, model_settings = _settings(args)
    _check_models(model_settings)
    if args.api_key is not None:
        print(f"{PROG}: warning: an --api_key on the command line is visible to every user "
              "of this machine (ps); prefer PYINFER_API_KEY=... or --api_key_file",
              file=sys.stderr)
    import uvicorn
    from .app import create_app
    if hasattr(signal, "SIGUSR1"):      # `kill -USR1 PID`: every thread's stack to stderr
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (OSError, ValueError, AttributeError):   # stderr without a file descriptor
            pass
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    uvicorn.run(app, host=server_settings.host, port=server_settings.port,
                ssl_keyfile=server_settings.ssl_keyfile,
                ssl_certfile=server_settings.ssl_certfile)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The entry point: 0 after serving; 2 for the user's errors (one line on stderr)."""
    args = build_parser().parse_args(argv)
    return cli_util.run(lambda: _serve(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
