"""Turn the Market-1501 half (375 people, training crops only) into a train / within-domain test split.

    python -m training.data.market_half ../shared/data/market1501_half_train.tar datasets/market_half

The identities are split, not the crops: ``test_ids`` people (drawn with ``seed``) go to the test side, the
rest to ``bounding_box_train``. On the test side, Market's own rule makes the queries: one crop per person and
camera (the first in name order) goes to ``query``, every other crop of that person to ``bounding_box_test``, so
the Market protocol (same person, same camera removed) leaves each query its other cameras to find. The result
is read by ``read_market1501`` (data.format: market1501). ``SOURCE.json`` beside the folders names the data and
its terms, which the training loop copies into the model card.

Crops are written by extracting the tar, never fetched from elsewhere; a finished folder (same tar hash, same
split arguments) is reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from model.checkpoint import file_sha256

logger = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE.json"
TERMS = "Market-1501 (Zheng et al. 2015), half of its training identities: research use only (Market-1501 terms)"
MEMBER_DIR = "market1501_half/bounding_box_train/"


def _pid_camera(name: str) -> tuple[int, int]:
    pid, rest = name.split("_", 1)
    if not rest.startswith("c"):
        raise ValueError(f"not a Market-1501 crop name: {name}")
    return int(pid), int(rest[1 : rest.index("s")])


def split_identities(names: list[str], test_ids: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(train, query, gallery) file names: ``test_ids`` identities drawn with ``seed`` are held out for testing."""
    by_pid: dict[int, list[str]] = defaultdict(list)
    for name in sorted(names):
        by_pid[_pid_camera(name)[0]].append(name)
    pids = sorted(p for p in by_pid if p > 0)
    if not 0 < test_ids < len(pids):
        raise ValueError(f"test_ids must be in 1..{len(pids) - 1} (there are {len(pids)} people), got {test_ids}")
    held_out = set(random.Random(seed).sample(pids, test_ids))
    train, query, gallery = [], [], []
    for pid in pids:
        if pid not in held_out:
            train += by_pid[pid]
            continue
        seen: set[int] = set()
        for name in by_pid[pid]:
            camera = _pid_camera(name)[1]
            (gallery if camera in seen else query).append(name)
            seen.add(camera)
    return train, query, gallery


def prepare_market_half(tar_path: str | Path, out: str | Path, test_ids: int = 75, seed: int = 0) -> dict[str, Any]:
    """Extract ``tar_path`` into a Market-layout folder ``out`` with an identity split; returns SOURCE.json's data."""
    tar_path, out = Path(tar_path), Path(out)
    digest = file_sha256(tar_path)
    source_path = out / SOURCE_FILE
    if source_path.is_file():
        existing = json.loads(source_path.read_text())
        if existing.get("sha256") == digest and existing.get("split") == {"test_ids": test_ids, "seed": seed}:
            logger.info("%s already holds this split; reusing it", out)
            return dict(existing)
        raise FileExistsError(f"{out} holds another split or data set ({source_path}); choose another folder")
    with tarfile.open(tar_path) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.startswith(MEMBER_DIR)]
        names = [Path(m.name).name for m in members if m.name.endswith(".jpg")]
        train, query, gallery = split_identities(names, test_ids, seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".market_half-", dir=out.parent))
        try:
            for folder, files in (("bounding_box_train", train), ("query", query), ("bounding_box_test", gallery)):
                target = staging / folder
                target.mkdir()
                wanted = set(files)
                for member in members:
                    name = Path(member.name).name
                    if name in wanted:
                        handle = archive.extractfile(member)
                        assert handle is not None
                        (target / name).write_bytes(handle.read())
            record = {
                "data": "Market-1501 half (market1501_half_train.tar)",
                "sha256": digest,
                "terms": TERMS,
                "split": {"test_ids": test_ids, "seed": seed},
                "counts": {
                    "train_images": len(train),
                    "train_ids": len({_pid_camera(n)[0] for n in train}),
                    "query_images": len(query),
                    "gallery_images": len(gallery),
                    "test_ids": test_ids,
                },
            }
            (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2))
            if out.exists():
                out.rmdir()  # only an empty folder can be here: a filled one has SOURCE.json (checked above)
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("Market half -> %s: %s", out, record["counts"])
    return record


def read_source(root: str | Path) -> dict[str, Any] | None:
    """SOURCE.json of a prepared data folder (its name, hash and terms), or None when there is none."""
    path = Path(root) / SOURCE_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """python -m training.data.market_half TAR OUT [--test-ids 75] [--seed 0]."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("tar", type=Path, help="market1501_half_train.tar")
    parser.add_argument("out", type=Path, help="folder to write (Market-1501 layout)")
    parser.add_argument("--test-ids", type=int, default=75, help="people held out for the within-domain test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prepare_market_half(args.tar, args.out, args.test_ids, args.seed)  # logs the counts
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
