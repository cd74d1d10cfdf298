"""The model-zoo registry: every entry is buildable, fully described, and its measured numbers are the benchmark's."""

from __future__ import annotations

import json
import re

import pytest

from model.factory import ARCHITECTURES
from model.torchreid_import import OSNET_ARCHITECTURES
from tests.conftest import REPO_ROOT
from training.zoo.registry import ZOO, get_entry

RESULTS = REPO_ROOT / "benchmarks" / "results" / "zoo_cuhk03.json"


@pytest.mark.parametrize("name", list(ZOO))
def test_entry_is_convertible_and_fully_described(name: str) -> None:
    entry = ZOO[name]
    assert entry.name == name
    # Only architectures the strict importer and the factory (hence the service) both know.
    assert entry.architecture in OSNET_ARCHITECTURES and entry.architecture in ARCHITECTURES
    assert name.startswith(entry.architecture + "_")
    assert entry.urls and all(url.startswith("https://") for url in entry.urls)
    assert entry.file_name.startswith(entry.architecture + "_") and entry.file_name.endswith(".pth")
    assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.num_classes in (751, 1041, 4101)
    assert "MIT" in entry.weights_licence and "research" in entry.data_terms
    assert entry.input_size == (256, 128)
    card = entry.card()
    for key in ("training_data", "weights_licence", "data_terms", "source_page", "source_file", "published_metrics"):
        assert card[key], key
    assert 0 < entry.published["rank1"] < 1 and 0 < entry.published["mAP"] < 1


def test_measured_numbers_are_the_committed_benchmark_results() -> None:
    rows = json.loads(RESULTS.read_text())["rows"]
    measured = {
        name: {key: entry.measured[key] for key in ("cuhk03_rank1_100", "cuhk03_rank1_all")}
        for name, entry in ZOO.items()
        if entry.measured
    }
    from_json: dict[str, dict[str, float]] = {}
    for row in rows:
        key = "cuhk03_rank1_100" if row["gallery"] == "first 100" else "cuhk03_rank1_all"
        from_json.setdefault(row["model"], {})[key] = round(row["rank1"], 3)
    assert measured == from_json


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: osnet_x1_0_market1501, osnet_x1_0_msmt17"):
        get_entry("resnet50_market1501")
