"""benchmarks/gpu_wheels.py: the GPU check carries exactly what the project needs and the GPU machine lacks, read
from the installed dependency metadata (a hand-written list went stale once: it named a package the project had
dropped and missed two it had added)."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks.gpu_wheels import DEFAULT_EXTRAS, NOT_IMPORTED, PROJECT, _applies, machine_packages, resolve


@pytest.fixture(scope="module")
def closure():
    try:
        metadata.distribution(PROJECT)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{PROJECT} is not installed (make install)")
    return resolve()


def test_every_direct_requirement_is_carried_provided_or_left_out_with_a_reason(closure) -> None:
    direct = {canonicalize_name(Requirement(r).name) for r in metadata.requires(PROJECT) or []
              if _applies(Requirement(r), DEFAULT_EXTRAS)}
    direct.discard(canonicalize_name(PROJECT))  # extras built from the project's own extras: followed, not carried
    accounted = set(closure.carried) | closure.provided | set(closure.left_out)
    assert direct - accounted == set()
    assert set(closure.left_out) <= set(NOT_IMPORTED)


def test_nothing_the_machine_has_is_carried_and_versions_are_the_installed_ones(closure) -> None:
    assert set(closure.carried) & machine_packages() == set()
    for name, version in closure.carried.items():
        assert metadata.version(name) == version
    # The service's own stack reaches the list through the metadata, not by name.
    assert {"fastapi", "fastapi-offline", "pydantic-settings", "faiss-cpu", "uvicorn"} <= set(closure.carried)
    assert "swagger-ui-bundle" not in closure.carried


def test_a_package_the_machine_lacks_is_carried_with_its_own_needs() -> None:
    try:
        metadata.distribution(PROJECT)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{PROJECT} is not installed (make install)")
    without_pillow = resolve(machine=machine_packages() - {"pillow"})
    assert without_pillow.carried["pillow"] == metadata.version("pillow")


def test_markers_are_evaluated_for_the_gpu_machine() -> None:
    assert _applies(Requirement('tomli; python_version < "3.13"'), ())
    assert not _applies(Requirement('tomli; python_version < "3.12"'), ())
    assert not _applies(Requirement('pywin32; sys_platform == "win32"'), ())
    assert _applies(Requirement('faiss-cpu; extra == "cpu"'), ("cpu",))
    assert not _applies(Requirement('faiss-gpu; extra == "gpu"'), ("cpu",))
