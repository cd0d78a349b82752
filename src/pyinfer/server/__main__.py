"""`python -m pyinfer.server --model M.gguf [--n_ctx N] [--host H] [--port P] ...`

Every field of Settings is a `--name` option (booleans take true/false); unset options
come from environment variables of the same name, then the defaults. `--config_file`
(or CONFIG_FILE) reads server settings and a list of models from JSON or YAML instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Any, List, Optional, Tuple

from .settings import ModelSettings, ServerSettings, Settings, load_config_file


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "on", "t", "true", "y", "yes"):
        return True
    if t in ("0", "off", "f", "false", "n", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pyinfer.server",
                                 description="pyinfer: an OpenAI-compatible server for GGUF models")
    for name, field in Settings.model_fields.items():
        typ, is_list = _base_type(field.annotation)
        help_text = field.description or ""
        if not field.is_required() and field.default is not None:
            help_text += f" (default: {field.default})"
        if typ is bool:
            ap.add_argument(f"--{name}", dest=name, type=_parse_bool, metavar="BOOL",
                            help=help_text)
        else:
            ap.add_argument(f"--{name}", dest=name, type=typ if typ in (int, float) else str,
                            nargs="*" if is_list else None, help=help_text)
    ap.add_argument("--config_file", help="JSON or YAML file: server settings and `models`")
    return ap


def settings_from_args(argv: Optional[List[str]] = None
                       ) -> Tuple[ServerSettings, List[ModelSettings]]:
    """Server and model settings from the command line, environment or config file."""
    args = build_parser().parse_args(argv)
    config_file = args.config_file or os.environ.get("CONFIG_FILE")
    if config_file:
        cfg = load_config_file(config_file)
        return ServerSettings.model_validate(cfg.model_dump(exclude={"models"})), cfg.models
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in Settings.model_fields}
    if "model" not in given and not os.environ.get("MODEL"):
        raise ValueError("no model: give --model M.gguf (or MODEL=..., or --config_file)")
    settings = Settings(**given)
    dump = settings.model_dump()
    return ServerSettings.model_validate(dump), [ModelSettings.model_validate(dump)]


def main(argv: Optional[List[str]] = None) -> int:
    try:
        server_settings, model_settings = settings_from_args(argv)
    except Exception as e:      # missing --model, bad config file: a message, not a trace
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn
    from .app import create_app
    try:
        app = create_app(server_settings=server_settings, model_settings=model_settings)
    except (ValueError, OSError) as e:     # a missing or unreadable model file
        print(f"error: {e}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=os.getenv("HOST", server_settings.host),
                port=int(os.getenv("PORT", server_settings.port)),
                ssl_keyfile=server_settings.ssl_keyfile,
                ssl_certfile=server_settings.ssl_certfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
