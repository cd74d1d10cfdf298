"""``reid-serve``: run the service with uvicorn, settings from REID_* environment variables.

    REID_CHECKPOINT=checkpoints/default.onnx REID_DATA_DIR=/var/lib/reid \
        reid-serve --host 0.0.0.0 --port 8000

Before anything loads, it binds the port (a port in use fails at once) and checks, in milliseconds, what would
otherwise end a 30-second start-up: a missing model file, a graph without the torch to export it, a graph that
belongs to another checkpoint, a data folder that holds another model's gallery. Each is one message naming the
command to run, without a traceback.

One worker per process on purpose: each worker would load its own copy of the model and its own FAISS
indexes; scale out with more processes behind a shared store instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from model.commands import command
from service.app import create_app
from service.core.settings import Settings
from service.core.version import VERSION
from service.gallery.local.store import gallery_owner
from service.inference.runtime import ServingSetupError, check_servable

logger = logging.getLogger(__name__)

# Start-up errors whose message says everything: uvicorn's copy of their traceback is dropped (see _NoSetupTraceback).
_SETUP_ERRORS = ("ServingSetupError", "FingerprintMismatchError", "GalleryInUseError", "StoreError")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid-serve", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


class _NoSetupTraceback(logging.Filter):
    """Starlette hands uvicorn the traceback of a failed start-up; for the errors above the service has logged
    the one line that matters already, so the 40-line copy is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Traceback") and any(f"{name}:" in text for name in _SETUP_ERRORS))


def bind_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` now, before the model loads; SystemExit with the fix when the port is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise SystemExit(f"reid-serve: cannot bind --host {host}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SystemExit(
                f"reid-serve: port {port} on {host} is already in use (another server?). Pick a free one: "
                f"make serve PORT={port + 1}, or {command('reid-serve')} --port {port + 1}"
            ) from exc
        raise SystemExit(f"reid-serve: cannot bind {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def _browsable(host: str) -> str:
    """The host part of a URL a browser on this machine can open for a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def check_data_dir(settings: Settings, model: Path, fingerprint: str) -> None:
    """Refuse (SystemExit, one message) a local gallery that holds another model's embeddings."""
    if settings.gallery_backend != "local":
        return  # Milvus checks its stored model at start-up (one message as well)
    owner = gallery_owner(settings.database_path)
    if owner is None or owner[0] == fingerprint or owner[1] == 0:
        return
    stored, count = owner
    data_dir = settings.data_dir
    fresh = Path(f"{str(data_dir).rstrip('/')}-{fingerprint[:8]}")
    raise SystemExit(
        f"reid-serve: REID_DATA_DIR={data_dir} holds {count} gallery item(s) of another model "
        f"({stored[:12]}...), not of {model} ({fingerprint[:12]}...); embeddings of two models cannot be "
        "compared. Either give this model its own data folder:\n"
        f"    REID_DATA_DIR={fresh} REID_CHECKPOINT={model} {command('reid-serve')}\n"
        "or re-embed that gallery for this model from its stored crops:\n"
        f"    {command('reid-reindex')} --data-dir {data_dir} --checkpoint {model}\n"
        "or serve the model that built it."
    )


def serve_main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Read the environment now so a bad REID_* value fails before the port is bound.
    settings = Settings()
    if settings.checkpoint is None:
        raise SystemExit("reid-serve: set REID_CHECKPOINT to a .safetensors checkpoint or its .onnx graph")
    sock = bind_port(args.host, args.port)
    try:
        files, fingerprint = check_servable(Path(settings.checkpoint), settings.runtime, settings.onnx_cache_path)
    except ServingSetupError as exc:
        sock.close()
        raise SystemExit(f"reid-serve: {exc}") from exc
    check_data_dir(settings, files.checkpoint or Path(settings.checkpoint), fingerprint)
    logging.getLogger("uvicorn.error").addFilter(_NoSetupTraceback())
    logger.info(
        "starting: model %s (%s...), data %s; the API and its docs will be at http://%s:%d/docs",
        settings.checkpoint,
        fingerprint[:12],
        settings.data_dir,
        _browsable(args.host),
        args.port,
    )
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, workers=1)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # start-up failed; the reason is logged above


if __name__ == "__main__":
    serve_main()
