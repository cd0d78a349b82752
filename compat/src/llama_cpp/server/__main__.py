"""`python -m llama_cpp.server --model M.gguf [options]`: pyinfer's server
(`python -m pyinfer.server`) with the same options, under this program name."""
from __future__ import annotations

import sys
from typing import List, Optional

PROG = "python -m llama_cpp.server"


def main(argv: Optional[List[str]] = None) -> int:
    from pyinfer import cli_util
    from pyinfer.server import __main__ as pyinfer_server
    parser = pyinfer_server.build_parser()
    parser.prog = PROG
    args = parser.parse_args(argv)
    return cli_util.run(lambda: pyinfer_server._serve(args), PROG)   # noqa: SLF001


if __name__ == "__main__":
    sys.exit(main())
