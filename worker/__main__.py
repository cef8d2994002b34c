"""`python -m worker` (what `anyband worker` runs): one process, one training at a time."""

from __future__ import annotations

import os
import socket
import sys

from anyband.queues import WORKER_QUEUES, is_filesystem_broker
from worker.app import app, settings


def main(argv: list[str] | None = None) -> None:
    args = [
        "worker",
        "--queues",
        ",".join(WORKER_QUEUES),
        "--concurrency",
        "1",
        "--hostname",
        f"anyband-{os.getpid()}@{socket.gethostname()}",
        "--loglevel",
        "INFO",
    ]
    if is_filesystem_broker(settings):
        args += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    app.worker_main([*args, *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    main()
