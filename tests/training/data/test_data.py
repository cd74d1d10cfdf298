"""Data set readers on trees made here (synthetic SoccerNet, Pillow-written Market/CUHK03) and on real CUHK03."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.readers import (
    UNLABELLED_PID,
    ReidImageDataset,
    parse_soccernet_name,
    read_cuhk03,
    read_market1501,
    read_soccernet,
    read_soccernet_eval,
    read_split,
)
from training.data.synthetic import SyntheticConfig, generate_soccernet_tree
from training.data.transforms import eval_transform

CONFIG = SyntheticConfig(
    train_games=2, valid_games=1, test_games=1, challenge_games=1, actions_per_game=2,
    players_per_action=6, views=3, height=64, width=32, seed=7, distractor_fraction=0.3,
)


@pytest.fixture(scope="module")
def soccernet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("soccernet")
    return root, generate_soccernet_tree(root, CONFIG)


def _write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (16, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="JPEG")


# ------------------------------------------------------------------------------------------- SoccerNet


def test_parse_official_example_and_challenge_names() -> None:
    name = parse_soccernet_name("54404-1940-33397-5089-Player_team_right-9-014r002_00858c3b0003-775x449.png")
    assert (name.bbox_idx, name.action_idx, name.person_uid, name.frame_idx) == (54404, 1940, "33397", 5089)
    assert (name.clazz, name.id, name.uai, name.height, name.width) == (
        "Player_team_right", "9", "014r002_00858c3b0003", 775, 449)
    assert name.filename() == "54404-1940-33397-5089-Player_team_right-9-014r002_00858c3b0003-775x449.png"
    challenge = parse_soccernet_name("12-3-120x45.png")
    assert (challenge.bbox_idx, challenge.action_idx, challenge.height, challenge.width) == (12, 3, 120, 45)
    assert challenge.person_uid is None and challenge.filename() == "12-3-120x45.png"


@pytest.mark.parametrize("bad", ["foo.png", "1-2-3-4-5.png", "a-1-2-3-Player-9-u-10x5.png", "1-2-10by5.png"])
def test_parse_rejects_other_names(bad: str) -> None:
    with pytest.raises(ValueError, match="SoccerNet"):
        parse_soccernet_name(bad)


def test_train_split_relabels_per_action(soccernet: tuple[Path, dict]) -> None:
    root, summary = soccernet
    split = read_soccernet(root, eval_split="valid")
    train = split.train
    assert len(train) == summary["splits"]["train"]["images"]
    assert split.num_train_pids == summary["splits"]["train"]["identities"]
    assert sorted({s.pid for s in train}) == list(range(split.num_train_pids))
    group_of: dict[int, str] = {}
    for sample in train:
        assert group_of.setdefault(sample.pid, sample.group) == sample.group  # identity lives in one action
        assert sample.group.count("/") == 3  # league/season/game/action
        assert parse_soccernet_name(sample.path.name).person_uid == sample.raw_pid
    assert len({s.group for s in train}) == CONFIG.train_games * CONFIG.actions_per_game
    assert {s.camid for s in train} == set(range(CONFIG.views))


def test_valid_query_gallery_follow_soccernet_rule(soccernet: tuple[Path, dict]) -> None:
    root, summary = soccernet
    split = read_soccernet(root, eval_split="valid", train_split=None)
    assert split.train == [] and split.num_train_pids == 0
    assert len(split.query) == summary["splits"]["valid"]["query"]
    assert len(split.gallery) == summary["splits"]["valid"]["gallery"]
    replay = defaultdict(set)
    for g in split.gallery:
        if g.camid > 0:
            replay[g.group].add(g.pid)
    for q in split.query:
        assert q.camid == 0  # action frame
        assert q.pid in replay[q.group]  # matched in a replay of the same action
    query_keys = {(q.group, q.pid) for q in split.query}
    distractors = [g for g in split.gallery if g.camid == 0]
    assert distractors, "the tiny tree should contain unmatched action-frame boxes"
    assert all((g.group, g.pid) not in query_keys and g.pid not in replay[g.group] for g in distractors)
    assert {q.group for q in split.query} <= {g.group for g in split.gallery}
    # pids are shared between query and gallery and unique per (action, person_uid)
    uid_of = {}
    for s in [*split.query, *split.gallery]:
        assert uid_of.setdefault(s.pid, (s.group, s.raw_pid)) == (s.group, s.raw_pid)


def test_unsplit_eval_folder_gives_the_official_split(soccernet: tuple[Path, dict], tmp_path: Path) -> None:
    """Deriving query/gallery from an action tree reproduces the generator's query/ and gallery/ folders."""
    root, _ = soccernet
    merged = tmp_path / "merged"
    for part in ("query", "gallery"):
        shutil.copytree(root / "test" / part, merged, dirs_exist_ok=True)
    official_q, official_g = read_soccernet_eval(root / "test")
    derived_q, derived_g = read_soccernet_eval(merged)
    assert sorted(s.path.name for s in derived_q) == sorted(s.path.name for s in official_q)
    assert sorted(s.path.name for s in derived_g) == sorted(s.path.name for s in official_g)
    official_camids = {s.path.name: s.camid for s in [*official_q, *official_g]}
    assert all(official_camids[s.path.name] == s.camid for s in [*derived_q, *derived_g])


def test_challenge_flat_layout(soccernet: tuple[Path, dict]) -> None:
    root, summary = soccernet
    split = read_soccernet(root, eval_split="challenge", train_split=None)
    assert len(split.query) == summary["splits"]["challenge"]["query"] > 0
    assert len(split.gallery) == summary["splits"]["challenge"]["gallery"] > 0
    assert {s.pid for s in [*split.query, *split.gallery]} == {UNLABELLED_PID}
    assert {s.camid for s in split.query} == {0} and {s.camid for s in split.gallery} == {1}
    assert {s.group for s in split.query} <= {s.group for s in split.gallery}
    bbox = [parse_soccernet_name(s.path.name).bbox_idx for s in split.query]
    assert bbox == sorted(bbox) == list(range(len(bbox)))


def test_soccernet_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_soccernet(tmp_path / "missing")
    with pytest.raises(ValueError, match="eval_split"):
        read_soccernet(tmp_path, eval_split="train")
    folder = tmp_path / "valid" / "l" / "s" / "g" / "0"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 16)).save(folder / "not-a-soccernet-name.png")
    with pytest.raises(ValueError, match="SoccerNet"):
        read_soccernet(tmp_path, eval_split="valid")


def test_dataset_items(soccernet: tuple[Path, dict]) -> None:
    root, _ = soccernet
    split = read_soccernet(root, eval_split="valid")
    dataset = ReidImageDataset(split.train, eval_transform((32, 16)))
    image, pid, camid, index = dataset[5]
    assert image.shape == (3, 32, 16) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert float(image.std()) > 0.01  # a drawn player, not a blank image
    assert (pid, camid, index) == (split.train[5].pid, split.train[5].camid, 5)
    assert len(dataset) == len(split.train) and dataset.pids[5] == pid and dataset.groups[5] == split.train[5].group


# --------------------------------------------------------------------------------------------- Market


def test_market1501_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def colour() -> tuple[int, int, int]:
        return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]

    for name in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
                 "0010_c6s4_002202_02.jpg"]:
        _write_jpeg(tmp_path / "bounding_box_train" / name, colour())
    for name in ["0003_c1s1_000101_00.jpg", "0004_c5s2_000201_00.jpg"]:
        _write_jpeg(tmp_path / "query" / name, colour())
    for name in ["0003_c2s1_000301_01.jpg", "0004_c1s1_000401_02.jpg", "0000_c1s1_000001_01.jpg",
                 "-1_c3s1_000011_04.jpg"]:
        _write_jpeg(tmp_path / "bounding_box_test" / name, colour())
    (tmp_path / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")

    split = read_market1501(tmp_path)
    assert split.num_train_pids == 3
    assert sorted((s.raw_pid, s.pid, s.camid) for s in split.train) == [
        ("10", 2, 5), ("2", 0, 0), ("2", 0, 1), ("7", 1, 2)]
    assert [(s.pid, s.camid) for s in split.query] == [(3, 0), (4, 4)]
    assert sorted((s.pid, s.camid) for s in split.gallery) == [(0, 0), (3, 1), (4, 0)]  # junk -1 dropped
    assert {s.group for s in [*split.train, *split.query, *split.gallery]} == {""}
    assert read_split("market1501", tmp_path).summary() == split.summary()


def test_market1501_rejects_foreign_names(tmp_path: Path) -> None:
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (tmp_path / folder).mkdir()
    _write_jpeg(tmp_path / "query" / "person7.jpg", (1, 2, 3))
    with pytest.raises(ValueError, match="Market"):
        read_market1501(tmp_path)


# ---------------------------------------------------------------------------------------------- CUHK03


def test_cuhk03_reader_on_made_files(tmp_path: Path) -> None:
    for pid in range(6):
        for idx in range(10):
            if pid == 5 and idx >= 7:
                continue  # real CUHK03 has identities with fewer than 10 shots
            _write_jpeg(tmp_path / f"{pid:04d}_{idx:02d}.jpg", (pid * 40, idx * 25, 100))
    split = read_cuhk03(tmp_path, train_pids=(0, 3), eval_pids=(3, 6))
    assert split.num_train_pids == 3 and len(split.train) == 30
    assert sorted({s.pid for s in split.train}) == [0, 1, 2]
    assert {s.camid for s in split.train} == {0, 1}
    assert all(s.camid == 1 for s in split.query) and all(s.camid == 0 for s in split.gallery)
    assert len(split.query) == 5 + 5 + 2 and len(split.gallery) == 15
    assert {s.pid for s in split.query} == {3, 4, 5}
    for sample in split.train:
        assert int(sample.path.stem.split("_")[1]) // 5 == sample.camid
    swapped = read_cuhk03(tmp_path, train_pids=None, eval_pids=(0, 6), query_camid=0)
    assert swapped.train == [] and all(s.camid == 0 for s in swapped.query) and len(swapped.query) == 30
    with pytest.raises(ValueError, match="overlap"):
        read_cuhk03(tmp_path, train_pids=(0, 4), eval_pids=(3, 6))
    with pytest.raises(ValueError, match="unknown data set kind"):
        read_split("duke", tmp_path)


@pytest.mark.shared_data
def test_cuhk03_reader_on_real_crops(cuhk03_dir: Path) -> None:
    split = read_cuhk03(cuhk03_dir, train_pids=(0, 1000), eval_pids=(1000, 1467))
    total = len(list(cuhk03_dir.glob("*.jpg")))
    assert len(split.train) + len(split.query) + len(split.gallery) == total
    assert split.num_train_pids == 1000
    assert sorted({s.pid for s in split.train}) == list(range(1000))
    assert {s.pid for s in split.query} <= set(range(1000, 1467))
    assert {s.camid for s in split.query} == {1} and {s.camid for s in split.gallery} == {0}
    matched = {s.pid for s in split.query} & {s.pid for s in split.gallery}
    assert len(matched) > 400
    image, pid, camid, _ = ReidImageDataset(split.query, eval_transform((256, 128)))[0]
    assert image.shape == (3, 256, 128) and 0.0 <= float(image.min()) < float(image.max()) <= 1.0
    assert (pid, camid) == (split.query[0].pid, 1)
