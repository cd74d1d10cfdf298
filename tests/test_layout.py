"""The tree is the architecture: each package folder is a layer, and imports only run to the same or a lower layer.

Layers, lowest first (CONTRIBUTING.md draws the same tree):
- service: core < inference < gallery (protocol) < gallery backends (local, milvus) < gallery factory < http
  < entry points (service.app, service.cli); only entry points sit at service/'s root.
- training: config < data, zoo < evaluation, calibration < train < cli.
- model imports neither service nor training; service never imports training.
Function-level imports count as well (the scan walks the whole syntax tree).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Longest matching prefix decides a module's layer.
LAYERS: dict[str, int] = {
    "model": 0,
    "service.core": 10,
    "service.inference": 11,
    "service.gallery": 12,
    "service.gallery.base": 12,
    "service.gallery.local": 13,
    "service.gallery.milvus": 13,
    "service.gallery.factory": 14,
    "service.http": 15,
    "service.app": 16,
    "service.cli": 16,
    "training.config": 20,
    "training.data": 21,
    "training.zoo": 21,
    "training.evaluation": 22,
    "training.calibration": 22,
    "training.train": 23,
    "training.cli": 24,
}
ENTRY_POINTS = {"service.app", "service.cli"}


def layer_of(module: str) -> tuple[str, int] | None:
    """The longest LAYERS prefix of ``module`` (a dotted name) and its rank; None for modules outside the tree."""
    best: tuple[str, int] | None = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module ``path`` imports (``from a.b import c`` counts as a.b and a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_modules() -> list[Path]:
    return sorted(p for pkg in ("model", "service", "training") for p in (REPO / pkg).rglob("*.py"))


def test_every_package_module_has_a_layer() -> None:
    missing = [module_name(p) for p in package_modules() if layer_of(module_name(p)) is None]
    # Package roots (service, training) hold only entry points and the package marker.
    assert missing == ["service", "training"]


def test_only_entry_points_at_the_service_root() -> None:
    assert sorted(p.name for p in (REPO / "service").glob("*.py")) == ["__init__.py", "app.py", "cli.py"]


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: module_name(p))
def test_no_import_runs_upward(path: Path) -> None:
    name = module_name(path)
    own = layer_of(name)
    upward = []
    for target in imported_modules(path):
        if target.split(".")[0] not in {"model", "service", "training"}:
            continue
        model_reaches_out = name.startswith("model") and not target.startswith("model")
        service_uses_training = name.startswith("service") and target.startswith("training")
        entry_point_imported = target in ENTRY_POINTS and name not in ENTRY_POINTS
        theirs = layer_of(target)
        higher_layer = own is not None and theirs is not None and theirs[1] > own[1]
        if model_reaches_out or service_uses_training or entry_point_imported or higher_layer:
            upward.append(target)
    assert upward == [], f"{name} (layer {own}) imports upward: {sorted(set(upward))}"
