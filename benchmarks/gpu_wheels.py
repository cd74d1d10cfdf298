"""What the GPU check must carry to the lent GPU machine, derived from the project's own dependency metadata.

    python -m benchmarks.gpu_wheels list                      # name==version per line, with why each is needed
    python -m benchmarks.gpu_wheels download --dest .whl      # cp312 manylinux wheels + the 48 MiB size check
    python -m benchmarks.gpu_wheels dry-run-env --venv DIR    # a CPU venv holding what the machine would have

The closure starts at this project's requirements (base + ``--extras``, markers evaluated for the machine:
CPython 3.12 on x86-64 Linux) and follows each requirement's own metadata, as installed in this environment, so
versions are the ones tested here. A package the machine's image already holds (gpu_machine_packages.txt) is not
carried, nor followed: the image brings its dependencies. Packages the GPU check never imports are left out
with their reason in NOT_IMPORTED; the CPU dry run (gpu_check_dry_run.sh) shows that they are not needed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)

PROJECT = "soccernet-reid"
MACHINE_LIST = Path(__file__).with_name("gpu_machine_packages.txt")
# The extras the GPU run uses: base (service, training, model) + the CPU FAISS wheel (no GPU faiss fits the
# machine's CUDA 13 within 64 MiB; see gpu_check.sh) and onnxruntime (already on the machine).
DEFAULT_EXTRAS = ("cpu",)
# Never imported by the GPU check: the embedded Milvus Lite server (imported only for a local-file REID_MILVUS_URI).
NOT_IMPORTED: dict[str, str] = {
    "milvus-lite": "embedded Milvus Lite server: only a local-file REID_MILVUS_URI imports it",
}
# Of the 64 MiB a device call carries, the rest is for the working tree.
LIMIT_MIB = 48
MACHINE = {
    **default_environment(),
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def machine_packages(path: Path = MACHINE_LIST) -> frozenset[str]:
    """Canonical names of what the GPU machine's image holds."""
    names = []
    for line in path.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            names.extend(line.split())
    return frozenset(canonicalize_name(n) for n in names)


def _applies(req: Requirement, extras: tuple[str, ...]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**MACHINE, "extra": extra}) for extra in ("", *extras))


@dataclass
class Closure:
    """carried: name -> installed version; provided: what the machine brings that the closure reached."""

    carried: dict[str, str] = field(default_factory=dict)
    provided: set[str] = field(default_factory=set)
    left_out: dict[str, str] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)


def resolve(extras: tuple[str, ...] = DEFAULT_EXTRAS, machine: frozenset[str] | None = None) -> Closure:
    """Walk the requirement graph from this project down to what the machine has; KeyError-free: a requirement
    that is not installed here raises RuntimeError naming it (the list would be incomplete)."""
    machine = machine_packages() if machine is None else machine
    closure = Closure()
    queue: list[tuple[str, tuple[str, ...], str]] = [(PROJECT, extras, "")]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while queue:
        name, wanted, parent = queue.pop()
        key = (canonicalize_name(name), tuple(sorted(wanted)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} (needed by {parent or PROJECT}) is not installed here: install the "
                               f"project first (make install) so its versions can be read") from None
        canonical = canonicalize_name(dist.metadata["Name"])
        if canonical != canonicalize_name(PROJECT):
            closure.carried[canonical] = dist.version
            closure.why.setdefault(canonical, parent)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if not _applies(req, wanted):
                continue
            dep = canonicalize_name(req.name)
            if dep in NOT_IMPORTED:
                closure.left_out[dep] = NOT_IMPORTED[dep]
            elif dep in machine:
                closure.provided.add(dep)
            else:
                queue.append((dep, tuple(sorted(req.extras)), canonical))
    return closure


def download(closure: Closure, dest: Path, limit_mib: int = LIMIT_MIB) -> int:
    """cp312 x86-64 wheels of every carried package into ``dest`` (emptied first); returns the size in bytes.
    Raises SystemExit(1) past ``limit_mib``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={version}" for name, version in sorted(closure.carried.items())]
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    # One pip call per package: a wheel that needs another manylinux tag is then named in the error.
    for pin in pins:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platform_args, "-d", str(dest), pin],
                       check=True)
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    wheels = len(list(dest.glob("*.whl")))
    print(f"gpu_wheels: {wheels} wheels, {size / 2**20:.1f} MiB in {dest} (limit {limit_mib} MiB)")
    if wheels != len(pins):
        raise SystemExit(f"gpu_wheels: expected {len(pins)} wheels, found {wheels} in {dest}")
    if size > limit_mib * 2**20:
        raise SystemExit(f"gpu_wheels: {size / 2**20:.1f} MiB is more than {limit_mib} MiB: the device call would "
                         "not carry it with the working tree")
    return size


def dry_run_env(closure: Closure, venv: Path) -> None:
    """A CPU venv as close to the GPU machine as this machine allows: torch + torchvision (the machine's own,
    here the project's pinned CPU-runnable build), what the closure found on the machine (with their
    dependencies, as the image has them) and the carried packages at their carried versions, without dependencies.
    Anything else is absent, so an import the machine would miss fails here too."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch_pins = [f"{n}=={metadata.version(n)}" for n in ("torch", "torchvision")]
    provided = sorted(closure.provided - {"torch", "torchvision", "pip", "setuptools"})
    provided_pins = [f"{n}=={metadata.version(n)}" for n in provided if _installed(n)]
    subprocess.run([*pip, *torch_pins, *provided_pins], check=True)
    carried = [f"{n}=={v}" for n, v in sorted(closure.carried.items())]
    subprocess.run([*pip, "--no-deps", *carried], check=True)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["list", "download", "dry-run-env"])
    parser.add_argument("--extras", default=",".join(DEFAULT_EXTRAS), help="project extras the GPU run needs")
    parser.add_argument("--dest", type=Path, default=Path(".whl"), help="download: folder for the wheels")
    parser.add_argument("--venv", type=Path, help="dry-run-env: folder of the venv to create")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    closure = resolve(tuple(e for e in args.extras.split(",") if e))
    if args.command == "list":
        for name, version in sorted(closure.carried.items()):
            print(f"{name}=={version}    # needed by {closure.why.get(name) or PROJECT}")
        for name, reason in sorted(closure.left_out.items()):
            print(f"# left out: {name}: {reason}")
        print(f"# on the machine already: {', '.join(sorted(closure.provided))}")
    elif args.command == "download":
        download(closure, args.dest)
    else:
        if args.venv is None:
            parser.error("dry-run-env needs --venv")
        dry_run_env(closure, args.venv)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
