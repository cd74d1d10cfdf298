"""Mutation check: break the product in known ways and show that the tests meant to guard each behaviour fail.

    .venv/bin/python .ci/mutations.py               # every mutation below; exit 1 if any survives
    .venv/bin/python .ci/mutations.py --list        # names, files and the tests run for each
    .venv/bin/python .ci/mutations.py --only api_key_check_off
    .venv/bin/python .ci/mutations.py --path service/x.py --old 'a < b' --new 'a <= b' -- tests/service/...

Each mutation replaces one exact piece of text (it must occur exactly once, so a refactor that moves it makes the
check fail loudly instead of passing vacuously) in a temporary copy of the tree (the files git tracks plus the
untracked ones it does not ignore): the working tree is never touched. The mutated copy's tests run with that copy
first on PYTHONPATH. A mutation is killed when pytest reports failing tests (exit status 1); it survives when they
pass (0); any other status (collection error, no tests, interrupted) is an error of the check itself. Both survivors
and errors fail the run. The selection is kept small (well under 5 minutes on 2 CPU cores): each mutation runs only
the few tests written to catch it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("mutations")

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path`` (relative to the repository root); ``tests`` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "batch_size_forced_to_1",
        "service/inference/batching.py",
        "self.max_batch_size = max_batch_size\n",
        "self.max_batch_size = 1\n",
        ("tests/service/inference/test_service_batching.py",),
        "concurrent requests must share inference batches",
    ),
    Mutation(
        "duplicate_check_off",
        "service/gallery/local/backend.py",
        "existing = self.store.find_by_sha256(collection, [item.sha256 for item in items])\n",
        "existing: dict[str, str] = {}\n",
        ("tests/service/gallery/test_service_gallery.py", "-k", "same_bytes and local"),
        "the same crop bytes are registered once per collection (409 names the item holding them)",
    ),
    Mutation(
        "threshold_ignored",
        "service/http/tracklets.py",
        '"match": top[0] if top is not None and top[1] >= threshold else None,',
        '"match": top[0] if top is not None else None,',
        ("tests/service/http/test_service_api.py", "-k", "threshold_decides and local"),
        "a query below the threshold answers match = null",
    ),
    Mutation(
        "abandoned_crops_kept_in_batches",
        "service/inference/batching.py",
        "                if item.job.abandoned():\n",
        "                if False:\n",
        ("tests/service/inference/test_service_batching.py", "-k", "cancel"),
        "crops of a request whose client has gone are dropped from the queue, not batched (nor embedded)",
    ),
    Mutation(
        "api_key_check_off",
        "service/http/deps.py",
        "    if not (header_ok or bearer_ok):\n",
        "    if False:\n",
        ("tests/service/http/test_service_api.py", "-k", "api_key_guards and local"),
        "without the configured API key every gallery route answers 401",
    ),
    Mutation(
        "deleted_items_returned",
        "service/gallery/local/index.py",
        "        self.bits[byte] |= np.uint8(1 << (item_id & 7))\n        self._ids.add(item_id)\n",
        "        pass\n",
        ("tests/service/gallery/local/test_service_index.py",),
        "an item removed from an HNSW index (a tombstone) is never a search hit: the tombstone filter must record it",
    ),
    Mutation(
        "snapshot_checksum_not_verified",
        "service/gallery/local/snapshots.py",
        "        if crc != header.payload_crc32:\n",
        "        if False:\n",
        ("tests/service/gallery/local/test_service_lifecycle.py", "-k", "checksum"),
        "a damaged index snapshot is rejected (and rebuilt from SQLite), never loaded",
    ),
)


def tree_files(root: Path) -> list[str]:
    """The files of the working tree that git tracks, plus untracked ones it does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listing.split("\0") if name and (root / name).is_file()})


def copy_tree(root: Path, dest: Path) -> None:
    for name in tree_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply(copy: Path, mutation: Mutation) -> str:
    """Write the mutated file into ``copy``; returns the original text (to restore it). ValueError when the text
    to replace is not there exactly once."""
    path = copy / mutation.path
    original = path.read_text()
    found = original.count(mutation.old)
    if found != 1:
        raise ValueError(
            f"{mutation.name}: the text to mutate occurs {found} times in {mutation.path} (expected once); "
            "the code moved: update .ci/mutations.py"
        )
    path.write_text(original.replace(mutation.old, mutation.new))
    return original


def run_tests(copy: Path, tests: tuple[str, ...], timeout_s: float) -> tuple[int, str]:
    # The torch runtime: no test chosen here is about ONNX, and the session's graph export would cost each run.
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1", "REID_RUNTIME": "torch"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        proc = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout_s:.0f} s"
    return proc.returncode, (proc.stdout + proc.stderr)


def check(mutations: list[Mutation], timeout_s: float) -> int:
    """Run every mutation in one temporary copy; returns the number of survivors and errors."""
    bad = 0
    with tempfile.TemporaryDirectory(prefix="reid-mutations-") as tmp:
        copy = Path(tmp) / "tree"
        copy_tree(REPO_ROOT, copy)
        for mutation in mutations:
            start = time.monotonic()
            try:
                original = apply(copy, mutation)
            except ValueError as exc:
                logger.info(f"ERROR    {exc}")
                bad += 1
                continue
            try:
                code, output = run_tests(copy, mutation.tests, timeout_s)
            finally:
                (copy / mutation.path).write_text(original)
            seconds = time.monotonic() - start
            tail = "\n".join("    " + line for line in output.strip().splitlines()[-3:])
            if code == 1:
                logger.info(f"killed   {mutation.name} ({seconds:.0f} s)\n{tail}")
            elif code == 0:
                logger.info(f"SURVIVED {mutation.name} ({seconds:.0f} s): {' '.join(mutation.tests)} passed")
                logger.info(f"    guarded behaviour: {mutation.why}")
                bad += 1
            else:
                logger.info(f"ERROR    {mutation.name}: pytest exit status {code} ({seconds:.0f} s)\n{tail}")
                bad += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", default=[], help="run only this mutation (repeatable)")
    parser.add_argument("--path", help="ad hoc mutation: file to change (relative to the repository root)")
    parser.add_argument("--old", help="ad hoc mutation: exact text to replace (must occur once)")
    parser.add_argument("--new", help="ad hoc mutation: replacement text")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutation's test run")
    parser.add_argument("tests", nargs="*", help="ad hoc mutation: the pytest arguments that must fail")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.list:
        for m in MUTATIONS:
            logger.info(f"{m.name}: {m.path}\n    guards: {m.why}\n    tests: {' '.join(m.tests)}")
        return 0
    if args.path is not None:
        if args.old is None or args.new is None or not args.tests:
            parser.error("--path needs --old, --new and the tests to run")
        selected = [Mutation("ad_hoc", args.path, args.old, args.new, tuple(args.tests))]
    else:
        known = {m.name: m for m in MUTATIONS}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            parser.error(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join(known)}")
        selected = [known[name] for name in args.only] if args.only else list(MUTATIONS)
    start = time.monotonic()
    bad = check(selected, args.timeout)
    logger.info(f"{len(selected) - bad} of {len(selected)} mutations killed in {time.monotonic() - start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
