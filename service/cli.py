"""``reid-serve``: run the service with uvicorn, settings from REID_* environment variables.

    REID_CHECKPOINT=artifacts/demo.safetensors REID_DATA_DIR=/var/lib/reid \
        reid-serve --host 0.0.0.0 --port 8000

One worker per process on purpose: each worker would load its own copy of the model and its own FAISS
indexes; scale out with more processes behind a shared store instead.
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from service.app import create_app
from service.core.settings import Settings
from service.core.version import VERSION

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid-serve", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def serve_main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Read the environment now so a bad REID_* value fails before the port is bound.
    settings = Settings()
    if settings.checkpoint is None:
        raise SystemExit("reid-serve: set REID_CHECKPOINT to a .safetensors checkpoint")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, workers=1)


if __name__ == "__main__":
    serve_main()
