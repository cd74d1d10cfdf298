"""The Market-1501-half identity split: disjoint people, Market's query rule, a folder read_market1501 reads."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from training.data.market_half import MEMBER_DIR, prepare_market_half, read_source, split_identities
from training.data.readers import read_market1501


def _names(people: int = 12, cameras: int = 3, shots: int = 2) -> list[str]:
    return [
        f"{pid:04d}_c{cam}s1_{1000 * cam + shot:06d}_01.jpg"
        for pid in range(1, people + 1)
        for cam in range(1, cameras + 1)
        for shot in range(shots)
    ]


def _pid(name: str) -> int:
    return int(name.split("_")[0])


def test_identities_are_split_not_crops() -> None:
    train, query, gallery = split_identities(_names(), test_ids=4, seed=0)
    test_people = {_pid(n) for n in query}
    assert len(test_people) == 4
    assert test_people == {_pid(n) for n in gallery}
    assert not test_people & {_pid(n) for n in train}
    assert len(train) + len(query) + len(gallery) == len(_names())


def test_one_query_per_person_and_camera() -> None:
    _, query, gallery = split_identities(_names(cameras=3, shots=2), test_ids=4, seed=0)
    keys = [(n.split("_")[0], n.split("_")[1][:2]) for n in query]
    assert len(keys) == len(set(keys)) == 4 * 3
    assert len(gallery) == 4 * 3 * (2 - 1)


def test_split_is_seeded() -> None:
    assert split_identities(_names(), 4, seed=1) == split_identities(_names(), 4, seed=1)
    assert split_identities(_names(), 4, seed=1)[1] != split_identities(_names(), 4, seed=2)[1]


def test_impossible_test_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"test_ids must be in 1\.\.11"):
        split_identities(_names(), test_ids=12, seed=0)


def _tar(path: Path, names: list[str]) -> Path:
    image = io.BytesIO()
    Image.new("RGB", (8, 16), (120, 30, 200)).save(image, format="JPEG")
    data = image.getvalue()
    with tarfile.open(path, "w") as archive:
        for name in names:
            info = tarfile.TarInfo(MEMBER_DIR + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_prepared_folder_reads_as_market_and_names_its_terms(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "half.tar", _names())
    record = prepare_market_half(tar, tmp_path / "out", test_ids=3, seed=0)
    split = read_market1501(tmp_path / "out")
    assert split.num_train_pids == 9 and len(split.query) == 9 and len(split.gallery) == 9
    assert read_source(tmp_path / "out") == record
    assert "research use" in record["terms"]
    # A second call with the same split reuses the folder; another split there is refused.
    assert prepare_market_half(tar, tmp_path / "out", test_ids=3, seed=0) == record
    with pytest.raises(FileExistsError):
        prepare_market_half(tar, tmp_path / "out", test_ids=4, seed=0)
    assert json.loads((tmp_path / "out" / "SOURCE.json").read_text())["split"] == {"test_ids": 3, "seed": 0}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".market_half-")]
