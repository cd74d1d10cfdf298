"""The synthetic SoccerNet-layout generator: layout, names, determinism, CLI, and that crops carry identity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.readers import parse_soccernet_name
from training.data.synthetic import (
    SYNTHETIC_NOTE,
    SyntheticConfig,
    _make_game,
    generate_soccernet_tree,
    render_crop,
    synthetic_main,
)

TINY = SyntheticConfig(
    train_games=2, valid_games=1, test_games=1, challenge_games=1, actions_per_game=2,
    players_per_action=6, views=3, height=64, width=32, seed=3,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_soccernet_tree(out, TINY)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def test_every_split_is_labelled_synthetic(tree: tuple[Path, dict]) -> None:
    out, summary = tree
    assert summary["synthetic"] is True
    assert set(summary["splits"]) == {"train", "valid", "test", "challenge"}
    for split in summary["splits"]:
        assert (out / split / "SYNTHETIC.txt").read_text() == SYNTHETIC_NOTE
    assert "SYNTHETIC" in (out / "SYNTHETIC.txt").read_text()
    assert json.loads((out / "synthetic_summary.json").read_text())["images"] == summary["images"]


def test_layout_counts_and_names(tree: tuple[Path, dict]) -> None:
    out, summary = tree
    train_files = list((out / "train").rglob("*.png"))
    assert len(train_files) == summary["splits"]["train"]["images"]
    # train: {league}/{season}/{game}/{action}/file.png
    assert all(len(p.relative_to(out / "train").parts) == 5 for p in train_files)
    for split in ("valid", "test"):
        for part in ("query", "gallery"):
            files = list((out / split / part).rglob("*.png"))
            assert len(files) == summary["splits"][split][part] > 0
            assert all(len(p.relative_to(out / split / part).parts) == 5 for p in files)
    for part in ("query", "gallery"):
        files = list((out / "challenge" / part).glob("*.png"))
        assert len(files) == summary["splits"]["challenge"][part] > 0
        for path in files:
            name = parse_soccernet_name(path.name)
            assert name.person_uid is None
    actions = {p.parent for p in train_files}
    assert len(actions) == TINY.train_games * TINY.actions_per_game


def test_names_match_pixels_and_are_real_pngs(tree: tuple[Path, dict]) -> None:
    out, _ = tree
    files = sorted(out.rglob("*.png"))
    for path in files[::7]:
        name = parse_soccernet_name(path.name)
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert (image.height, image.width) == (name.height, name.width) == (TINY.height, TINY.width)


def test_person_uids_unique_across_splits_and_actions(tree: tuple[Path, dict]) -> None:
    out, _ = tree
    owner: dict[str, str] = {}
    for path in out.rglob("*.png"):
        name = parse_soccernet_name(path.name)
        if name.person_uid is None:
            continue
        action = f"{path.relative_to(out).parts[0]}:{name.action_idx}"
        assert owner.setdefault(name.person_uid, action) == action


def test_action_frame_and_replays(tree: tuple[Path, dict]) -> None:
    """Queries come from the first frame of their action and are seen again in a replay."""
    out, _ = tree
    query = [parse_soccernet_name(p.name) for p in (out / "valid" / "query").rglob("*.png")]
    gallery = [parse_soccernet_name(p.name) for p in (out / "valid" / "gallery").rglob("*.png")]
    first_frame: dict[int, int] = {}
    for n in [*query, *gallery]:
        first_frame[n.action_idx] = min(first_frame.get(n.action_idx, n.frame_idx), n.frame_idx)
    replay_uids = {n.person_uid for n in gallery if n.frame_idx != first_frame[n.action_idx]}
    for n in query:
        assert n.frame_idx == first_frame[n.action_idx]
        assert n.person_uid in replay_uids
        assert n.id != "None"
    distractors = [n for n in gallery if n.frame_idx == first_frame[n.action_idx]]
    assert all(n.person_uid not in replay_uids and n.id == "None" for n in distractors)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = SyntheticConfig(train_games=1, valid_games=0, test_games=0, actions_per_game=1,
                             players_per_action=3, views=2, height=48, width=24, seed=11)
    generate_soccernet_tree(tmp_path / "a", config)
    generate_soccernet_tree(tmp_path / "b", config)
    other = SyntheticConfig(**{**config.__dict__, "seed": 12})
    generate_soccernet_tree(tmp_path / "c", other)
    a, b, c = (_digest(tmp_path / x / "train") for x in "abc")
    assert a and a == b
    assert set(a.values()).isdisjoint(c.values())


def test_variable_size_names_follow_image(tmp_path: Path) -> None:
    config = SyntheticConfig(train_games=1, valid_games=0, test_games=0, actions_per_game=2,
                             players_per_action=4, views=2, height=96, width=48, variable_size=True)
    generate_soccernet_tree(tmp_path, config)
    sizes = set()
    for path in tmp_path.rglob("*.png"):
        name = parse_soccernet_name(path.name)
        with Image.open(path) as image:
            assert (image.height, image.width) == (name.height, name.width)
            sizes.add(image.size)
            assert image.height <= 96 and image.width <= 48
    assert len(sizes) > 1


def test_cli_writes_tree(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path / "cli"), "--games", "1", "--eval-games", "1", "--actions-per-game", "1",
            "--players-per-action", "4", "--views", "2", "--height", "40", "--width", "20", "--seed", "5"]
    assert synthetic_main(argv) == 0
    summary = json.loads((tmp_path / "cli" / "synthetic_summary.json").read_text())
    assert summary["config"]["height"] == 40 and summary["config"]["seed"] == 5
    assert summary["images"] == len(list((tmp_path / "cli").rglob("*.png"))) > 0
    with pytest.raises(SystemExit):
        synthetic_main(["--out", str(tmp_path / "bad"), "--views", "0"])


@pytest.mark.parametrize(
    "overrides",
    [{"views": 0}, {"players_per_action": 0}, {"players_per_action": 26}, {"height": 8}, {"train_games": -1},
     {"occlusion_p": 1.5}],
)
def test_config_rejects_impossible_values(overrides: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**overrides)


def test_team_mates_share_kits_but_not_numbers() -> None:
    game = _make_game(np.random.default_rng(0), 0, "train")
    for side in ("left", "right"):
        team = [p for p in game.roster if p.clazz == f"Player_team_{side}"]
        assert len(team) == 10
        assert len({p.kit for p in team}) == 1
        assert len({p.label for p in team}) == 10
    left = next(p for p in game.roster if p.clazz == "Player_team_left")
    right = next(p for p in game.roster if p.clazz == "Player_team_right")
    assert left.kit.shirt != right.kit.shirt


def _colour_histogram(crop: Image.Image) -> np.ndarray:
    """Crude identity descriptor: 4x4x4 RGB histogram of the non-grass pixels, square-rooted."""
    pixels = np.asarray(crop, dtype=np.int64).reshape(-1, 3)
    grass = (pixels[:, 1] > pixels[:, 0] + 15) & (pixels[:, 1] > pixels[:, 2] + 15)
    bins = pixels[~grass] // 64
    counts = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64).astype(np.float64)
    return np.sqrt(counts / max(1.0, counts.sum()))


@pytest.mark.parametrize("seed", [0, 1])
def test_views_of_one_player_are_closer_than_team_mates(seed: int) -> None:
    """Identity is in the pixels although team-mates share a kit: leave-one-out nearest neighbour on a
    colour histogram finds another view of the same player far more often than chance."""
    rng = np.random.default_rng(seed)
    game = _make_game(rng, 0, "train")
    team = [p for p in game.roster if p.clazz == "Player_team_left"][:8]
    views_per_id = 5
    features = np.stack([
        _colour_histogram(render_crop(rng, person, (64, 32), low_res_p=0.0))
        for person in team for _ in range(views_per_id)
    ])
    ids = np.repeat(np.arange(len(team)), views_per_id)
    dists = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dists, np.inf)
    rank1 = float(np.mean(ids[dists.argmin(1)] == ids))
    chance = (views_per_id - 1) / (len(ids) - 1)
    assert rank1 > 3 * chance


def test_crop_size_does_not_change_the_scene_plan(tmp_path: Path) -> None:
    """Same seed at two crop sizes: the same people, frames and file names (up to the HxW field)."""
    names = []
    for height, width in ((48, 24), (80, 40)):
        config = SyntheticConfig(train_games=1, valid_games=1, test_games=0, actions_per_game=2,
                                 players_per_action=5, views=3, height=height, width=width, seed=2)
        out = tmp_path / f"{height}x{width}"
        generate_soccernet_tree(out, config)
        names.append(sorted(p.relative_to(out).as_posix().rsplit("-", 1)[0] for p in out.rglob("*.png")))
    assert names[0] and names[0] == names[1]
