"""What the benchmarks that start `anyband api` as a subprocess share: a free port, and waiting
until it answers GET /healthz."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(
    base_url: str, process: subprocess.Popen, timeout: float = 120.0, log_path: Path | None = None
) -> None:
    """Return once the API answers GET /healthz with 200; exit if it dies first (with the tail
    of `log_path`, when given) or does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "" if log_path is None else "\n" + log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(
                f"anyband api exited with rc={process.returncode} before it answered{tail}"
            )
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"anyband api did not answer GET /healthz within {timeout:.0f}s")
