"""CUHK03 rank-1 of zoo models, fetched by reid-fetch and measured through the running service.

Each model is fetched through the real download path (training/zoo/fetch.py) from a loopback mirror serving the
torchreid files of ../shared/data under their upstream names, then served by a real uvicorn process. Protocol,
for each person of CUHK03 (not in any zoo model's training data): crop ``<pid>_00`` (camera A) is registered
through POST /gallery, crop ``<pid>_05`` (camera B) is queried through POST /query (top_k 5); rank-1 / rank-5 say
whether the person's own label comes first / among the first five. Two gallery sizes: the first 100 people (as
tests/e2e/test_e2e_cuhk03.py) and all 1,467.

    .venv/bin/python -m benchmarks.zoo_cuhk03 --out benchmarks/results/zoo_cuhk03.json
    .venv/bin/python -m benchmarks.zoo_cuhk03 --quick --out /tmp/zoo.json      # 10 people, one model
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    SHARED_DATA,
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from tests.support.file_server import FileServer  # noqa: E402
from tests.support.images import files_field  # noqa: E402
from tests.support.live_server import LiveServer, server_env  # noqa: E402
from training.zoo.fetch import CACHE_ENV, MIRROR_ENV, fetch_model  # noqa: E402
from training.zoo.registry import ZOO  # noqa: E402

logger = logging.getLogger(__name__)

# Zoo entries whose upstream file is in ../shared/data, and that file's name there.
LOCAL_FILES = {"osnet_x0_25_market1501": "osnet_x0_25_market1501.pth", "osnet_x0_25_msmt17": "osnet_x0_25_msmt17.pth"}
CHUNK = 32  # crops per request
TOP_K = 5


def cuhk03_people(images: Path) -> list[str]:
    """Person ids (sorted) that have both the camera-A crop _00 and the camera-B crop _05."""
    return sorted(
        p.name.split("_")[0] for p in images.glob("*_00.jpg") if (images / p.name.replace("_00.", "_05.")).exists()
    )


def measure(client: Any, images: Path, pids: list[str], collection: str) -> dict[str, Any]:
    """Register pid_00 for every pid, query pid_05: rank-1, rank-5 and the query rate."""
    for start in range(0, len(pids), CHUNK):
        part = pids[start : start + CHUNK]
        response = client.post(
            "/gallery",
            files=files_field(
                *((images / f"{pid}_00.jpg").read_bytes() for pid in part), names=[f"{pid}_00.jpg" for pid in part]
            ),
            data={"collection": collection, "labels": part},
        )
        response.raise_for_status()
    top1 = top5 = 0
    began = time.perf_counter()
    for start in range(0, len(pids), CHUNK):
        part = pids[start : start + CHUNK]
        response = client.post(
            "/query",
            files=files_field(*((images / f"{pid}_05.jpg").read_bytes() for pid in part)),
            data={"collection": collection, "top_k": TOP_K},
        )
        response.raise_for_status()
        for pid, result in zip(part, response.json()["results"], strict=True):
            labels = [match["label"] for match in result["matches"]]
            top1 += labels[:1] == [pid]
            top5 += pid in labels
    seconds = time.perf_counter() - began
    return {
        "people": len(pids),
        "rank1": top1 / len(pids),
        "rank5": top5 / len(pids),
        "chance_rank1": 1 / len(pids),
        "queries_per_s": len(pids) / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "zoo_cuhk03.json")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    parser.add_argument("--models", nargs="+", default=list(LOCAL_FILES), choices=list(LOCAL_FILES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    models = args.models[:1] if args.quick else args.models
    files = {ZOO[name].file_name: (args.shared_data / LOCAL_FILES[name]).read_bytes() for name in models}

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name, FileServer(files) as mirror:
        tmp = Path(tmp_name)
        with tarfile.open(args.shared_data / "cuhk03_64x128.tar") as tar:
            tar.extractall(tmp / "cuhk03", filter="data")
        images = tmp / "cuhk03" / "dataset" / "images" / "full"
        people = cuhk03_people(images)
        sizes = {"first 10": people[:10]} if args.quick else {"first 100": people[:100], "all": people}
        os.environ[MIRROR_ENV] = mirror.base_url
        os.environ[CACHE_ENV] = str(tmp / "cache")
        for name in models:
            fetched = fetch_model(name, progress=False, backoff_s=0.0)
            env = server_env(
                fetched.checkpoint,
                tmp / f"data-{name}",
                REID_MAX_BATCH_SIZE=str(CHUNK),
                REID_TORCH_THREADS=str(args.threads),
                OMP_NUM_THREADS=str(args.threads),
            )
            with LiveServer(env, log_path=tmp / f"{name}.log") as server, server.client(timeout=600) as client:
                provenance = client.get("/info").json()["provenance"]
                assert provenance["name"] == name and provenance["sha256"] == ZOO[name].sha256, provenance
                for label, pids in sizes.items():
                    result = measure(client, images, pids, collection=label.replace(" ", "-"))
                    rows.append({"model": name, "gallery": label, **result, "sha256": provenance["sha256"]})
                    logger.info("%s, %s: %s", name, label, result)

    table = markdown_table(
        ["model (reid-fetch name)", "gallery", "people", "rank-1", "rank-5", "chance", "queries/s"],
        [
            (r["model"], r["gallery"], r["people"], r["rank1"], r["rank5"], r["chance_rank1"], r["queries_per_s"])
            for r in rows
        ],
    )
    write_results(args.out, {"quick": args.quick, "machine": machine_info(), "protocol": __doc__, "rows": rows})
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
