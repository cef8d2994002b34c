"""The `anyband` command: build and inspect models, run the API, a worker, or both (serve)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from anyband.errors import AnybandError
from anyband.strategies import INIT_STRATEGIES


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (AnybandError, ValueError, FileNotFoundError) as exc:
        print(f"anyband {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anyband", description="Fine-tune ImageNet ResNet50 on imagery with any band count."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build an adapted ResNet50 classifier and save it")
    build.add_argument("--bands", type=int, required=True, help="input band count (>= 1)")
    build.add_argument("--classes", type=int, required=True, help="number of classes (>= 2)")
    build.add_argument("--strategy", choices=INIT_STRATEGIES, default="repeat", help="conv1 init")
    build.add_argument(
        "--rgb-bands",
        type=int,
        nargs=3,
        default=(1, 2, 3),
        metavar=("R", "G", "B"),
        help="for --strategy rgb: 1-based positions of red, green, blue",
    )
    build.add_argument("--initializer", help="Keras initializer name, e.g. glorot_uniform")
    build.add_argument(
        "--weights", default="imagenet", help="imagenet, none, or a 3-band ResNet50 weights file"
    )
    build.add_argument("--band-mean", type=float, nargs="+", help="per-band mean (raw units)")
    build.add_argument("--band-std", type=float, nargs="+", help="per-band std (raw units)")
    build.add_argument("--seed", type=int)
    build.add_argument("--out", type=Path, required=True, help="where to save the .keras model")
    build.set_defaults(run=_build)

    inspect = commands.add_parser("inspect", help="describe a saved anyband model")
    inspect.add_argument("path", type=Path)
    inspect.set_defaults(run=_inspect)

    api = commands.add_parser("api", help="run the REST API (uvicorn)")
    _add_server_arguments(api)
    api.set_defaults(run=_api)

    worker = commands.add_parser(
        "worker",
        help="run a worker: training jobs and scenes (Celery; extra arguments go to celery worker)",
    )
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(run=_worker)

    serve = commands.add_parser(
        "serve", help="run the API and one worker together (the one-machine default)"
    )
    _add_server_arguments(serve)
    serve.set_defaults(run=_serve)
    return parser


def _add_server_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; another needs ANYBAND_API_KEYS)",
    )
    command.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    command.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default: %(default)s)",
    )


def _build(args: argparse.Namespace) -> int:
    from anyband.model import build_classifier

    if args.out.suffix != ".keras":
        raise ValueError(f"--out must end in .keras. Received: {args.out}")
    model = build_classifier(
        args.bands,
        args.classes,
        strategy=args.strategy,
        weights=args.weights,
        rgb_bands=tuple(args.rgb_bands),
        initializer=args.initializer,
        band_mean=args.band_mean,
        band_std=args.band_std,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(
        f"saved {args.out} ({args.bands} bands, {args.classes} classes, strategy {args.strategy})"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from anyband.artifacts import CARD_FILE
    from anyband.model import describe
    from anyband.saving import load_model

    path = args.path
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model (a Keras 3 zip archive); truncated?")
    try:
        model = load_model(path)
    except Exception as exc:  # Keras raises KeyError, ValueError, OSError ... for a bad archive
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable .keras model: {reason}") from exc
    try:
        described = describe(model)
    except ValueError as exc:  # get_layer: no band normalization layer
        raise ValueError(
            f"{path} is a Keras model, but not one anyband built: it has no band normalization "
            "layer (build one with `anyband build` or train one through the API)"
        ) from exc
    card = path.parent / CARD_FILE  # a model folder of the service: its classes have names
    if card.is_file():
        described["class_names"] = json.loads(card.read_text()).get("classes")
    print(json.dumps(described, indent=2))
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    host = _safe_host(args.host, "api")
    # By import string: the launcher starts the service without the library importing it.
    uvicorn.run("service.main:app", host=host, port=args.port, log_level=args.log_level)
    return 0


def _worker_command(celery_args: list[str]) -> list[str]:
    # A module run, not an import: the library never imports the worker package.
    return [sys.executable, "-m", "worker", *celery_args]


def _worker(args: argparse.Namespace) -> int:
    command = _worker_command(args.celery_args)
    os.execv(command[0], command)  # the worker becomes this process: signals reach it directly
    return 0  # not reached


def _serve(args: argparse.Namespace) -> int:
    """The API in this process and one worker as a child; stopping one stops both."""
    import signal
    import subprocess

    import uvicorn

    host = _safe_host(args.host, "serve")
    worker = subprocess.Popen(_worker_command([]))
    # uvicorn shuts down on SIGTERM, restores this handler, then raises SIGTERM again: with the
    # default handler that would end this process before the `finally`, orphaning the worker.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run("service.main:app", host=host, port=args.port, log_level=args.log_level)
    finally:
        if worker.poll() is None:
            # Cold shutdown: a warm one would wait for a training that may take hours. The worker
            # hands its job back after the current batch; the next worker resumes it from its
            # last checkpoint. The first batch of a phase builds TensorFlow's graph (10-20 s on
            # a CPU) and cannot be cut short: killed then, the job would wait out its lease and
            # lose an attempt. 60 s, as docker-compose.yml's stop_grace_period.
            worker.send_signal(signal.SIGQUIT)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


def _exit_on_signal(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _safe_host(host: str, command: str) -> str:
    from anyband.settings import get_settings

    if not get_settings().api_key_list and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"anyband {command}: ANYBAND_API_KEYS is empty, so authentication is off: binding to "
            f"127.0.0.1 instead of {host}. Set ANYBAND_API_KEYS to serve other machines.",
            file=sys.stderr,
        )
        host = "127.0.0.1"
    return host


if __name__ == "__main__":
    raise SystemExit(main())
