"""A real `ledger serve` in a subprocess on a free port: for tests and the HTTP benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m ledger serve ARGS` with an environment of its own; stopped with SIGTERM."""

    def __init__(
        self,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        *,
        port: int | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        full_env.update(env)
        self._log_dir = log_dir or Path(env.get("LEDGER_HOME", "."))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.output_path = self._log_dir / f"server-{self.port}.out"
        self._output = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ledger", "serve", "--port", str(self.port), *args],
            env=full_env,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self._output.closed:
            self._output.flush()
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: in-flight groups finish), then SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._output.close()
        return int(self.process.returncode)

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
