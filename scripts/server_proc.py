"""`python -m pyinfer.server` in a subprocess for the benchmark and soak scripts: started on a
free loopback port, waited for through /health, its stderr kept (the last lines) by a thread so
that the pipe never fills and blocks the server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The server on 127.0.0.1:`port` with `args` after `--model MODEL --host --port`."""

    def __init__(self, model: str, args: Sequence[str] = (), port: Optional[int] = None,
                 env: Optional[Dict[str, str]] = None, keep_lines: int = 400, timeout: float = 120):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log: List[str] = []
        self._keep = keep_lines
        cmd = [sys.executable, "-m", "pyinfer.server", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        threading.Thread(target=self._tail, daemon=True).start()
        self._wait(timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))
            del self.log[:-self._keep]

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.5)
                sys.exit(f"server exited: {''.join(self.log)}")
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.proc.kill()
        sys.exit(f"server did not start in {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
