"""Re-id data set readers (SoccerNet-ReID, Market-1501, CUHK03) and the torch Dataset over them.

Every reader returns a :class:`ReidSplit` of :class:`Sample` records. ``Sample.group`` is the ranking
group: evaluation compares a query only with gallery items of its own group (the action folder for
SoccerNet, "" for the surveillance data sets where everything is ranked together).

    >>> from training.data.readers import read_soccernet, ReidImageDataset
    >>> split = read_soccernet("datasets/soccernetv3/reid", eval_split="valid")
    >>> dataset = ReidImageDataset(split.train, transform)  # items: (image (3,H,W), pid, camid, index)

SoccerNet-ReID (https://github.com/SoccerNet/sn-reid) layout::

    {train,valid,test}/{league}/{season}/{game}/{action}/<name>.png            (unsplit layout)
    {valid,test}/{query,gallery}/{league}/{season}/{game}/{action}/<name>.png  (official eval layout)
    challenge/{query,gallery}/<bbox_idx>-<action_idx>-<H>x<W>.png              (labels hidden)

with <name> = bbox_idx-action_idx-person_uid-frame_idx-class-ID-UAI-HxW. Person ids are only valid
inside one action. Query = action-frame boxes whose person is matched in a replay frame; gallery =
replay boxes plus the unmatched action-frame boxes (distractors). When a split has no query/gallery
folders this rule is applied here, taking the smallest frame_idx of an action as its action frame.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.transforms import ImageTransform, eval_transform, load_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
SOCCERNET_SPLITS = ("train", "valid", "test", "challenge")
SOCCERNET_CLASSES = (
    "Player_team_left",
    "Player_team_right",
    "Goalkeeper_team_left",
    "Goalkeeper_team_right",
    "Main_referee",
    "Side_referee",
    "Staff_members",
    "Player_team_unknown_1",
    "Player_team_unknown_2",
    "Goalkeeper_team_unknown",
)
UNLABELLED_PID = -1


@dataclass(frozen=True)
class Sample:
    """One crop.

    pid: identity, globally unique within a split's train list (relabelled 0..N-1) and shared between
        query and gallery lists; ``UNLABELLED_PID`` when labels are hidden (SoccerNet challenge).
    camid: camera (Market, CUHK03) or frame position inside the action for SoccerNet (0 = action frame,
        1.. = replay frames in frame order; for the challenge split 0 = query, 1 = gallery).
    group: ranking group ("league/season/game/action" for SoccerNet, "" elsewhere).
    raw_pid: the identity as written in the file name (SoccerNet person_uid, Market/CUHK03 pid).
    """

    path: Path
    pid: int
    camid: int
    group: str
    raw_pid: str = ""


@dataclass(frozen=True)
class ReidSplit:
    """Train / query / gallery sample lists of one data set; train pids are 0..num_train_pids-1."""

    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    num_train_pids: int

    def summary(self) -> dict[str, int]:
        """Counts for logs and run metadata."""
        return {
            "train_images": len(self.train),
            "train_pids": self.num_train_pids,
            "query_images": len(self.query),
            "gallery_images": len(self.gallery),
            "query_pids": len({s.pid for s in self.query}),
            "gallery_pids": len({s.pid for s in self.gallery}),
            "groups": len({s.group for s in [*self.query, *self.gallery]}),
        }


def _image_files(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


# --------------------------------------------------------------------------------------------- SoccerNet


@dataclass(frozen=True)
class SoccerNetName:
    """Fields of a SoccerNet-ReID file name; the labelled fields are None for challenge names."""

    bbox_idx: int
    action_idx: int
    height: int
    width: int
    person_uid: str | None = None
    frame_idx: int | None = None
    clazz: str | None = None
    id: str | None = None
    uai: str | None = None

    def filename(self) -> str:
        """Inverse of :func:`parse_soccernet_name` (``.png`` suffix)."""
        shape = f"{self.height}x{self.width}"
        if self.person_uid is None:
            return f"{self.bbox_idx}-{self.action_idx}-{shape}.png"
        fields = (self.bbox_idx, self.action_idx, self.person_uid, self.frame_idx,
                  self.clazz, self.id, self.uai)
        return "-".join(map(str, fields)) + f"-{shape}.png"


def parse_soccernet_name(filename: str) -> SoccerNetName:
    """Parse ``bbox_idx-action_idx-person_uid-frame_idx-class-ID-UAI-HxW.png`` (8 fields) or the
    challenge form ``bbox_idx-action_idx-HxW.png`` (3 fields); ValueError on anything else."""
    stem = filename.rsplit(".", 1)[0]
    parts = stem.split("-")
    try:
        height, width = (int(v) for v in parts[-1].split("x"))
        if len(parts) == 8:
            return SoccerNetName(
                bbox_idx=int(parts[0]),
                action_idx=int(parts[1]),
                person_uid=parts[2],
                frame_idx=int(parts[3]),
                clazz=parts[4],
                id=parts[5],
                uai=parts[6],
                height=height,
                width=width,
            )
        if len(parts) == 3:
            return SoccerNetName(bbox_idx=int(parts[0]), action_idx=int(parts[1]), height=height, width=width)
    except ValueError as exc:
        raise ValueError(f"not a SoccerNet-ReID file name: {filename!r} ({exc})") from exc
    raise ValueError(
        f"not a SoccerNet-ReID file name: {filename!r} (expected 8 '-'-separated fields "
        "bbox_idx-action_idx-person_uid-frame_idx-class-ID-UAI-HxW or 3 fields bbox_idx-action_idx-HxW)"
    )


@dataclass(frozen=True)
class _SoccerNetCrop:
    path: Path
    group: str
    name: SoccerNetName

    @property
    def uid(self) -> str:
        return str(self.name.person_uid)

    @property
    def frame(self) -> int:
        return int(self.name.frame_idx or 0)


def _scan_soccernet_actions(root: Path) -> list[_SoccerNetCrop]:
    """All labelled crops under ``root``/{league}/{season}/{game}/{action}/, in file-name order."""
    crops = []
    for path in _image_files(root, "*/*/*/*/*"):
        name = parse_soccernet_name(path.name)
        if name.person_uid is None:
            raise ValueError(f"unlabelled (challenge-style) file in a labelled split: {path}")
        group = path.parent.relative_to(root).as_posix()
        crops.append(_SoccerNetCrop(path, group, name))
    crops.sort(key=lambda c: (c.name.bbox_idx, c.path.as_posix()))
    return crops


def _frame_positions(crops: Iterable[_SoccerNetCrop]) -> dict[tuple[str, int], int]:
    """(group, frame_idx) -> 0 for the action frame (smallest frame_idx), 1.. for replays in order."""
    frames: dict[str, set[int]] = defaultdict(set)
    for crop in crops:
        frames[crop.group].add(crop.frame)
    return {(group, f): pos for group, fs in frames.items() for pos, f in enumerate(sorted(fs))}


def _relabel(crops: Sequence[_SoccerNetCrop]) -> dict[tuple[str, str], int]:
    """(group, person_uid) -> 0..N-1 in order of first appearance: uids are only unique per action."""
    labels: dict[tuple[str, str], int] = {}
    for crop in crops:
        labels.setdefault((crop.group, crop.uid), len(labels))
    return labels


def _to_samples(
    crops: Iterable[_SoccerNetCrop], labels: dict[tuple[str, str], int], positions: dict[tuple[str, int], int]
) -> list[Sample]:
    return [
        Sample(
            path=c.path,
            pid=labels[(c.group, c.uid)],
            camid=positions[(c.group, c.frame)],
            group=c.group,
            raw_pid=c.uid,
        )
        for c in crops
    ]


def split_query_gallery(crops: Sequence[_SoccerNetCrop]) -> tuple[list[_SoccerNetCrop], list[_SoccerNetCrop]]:
    """The SoccerNet rule on an unsplit action tree: a crop is a query when it lies in its action's
    action frame and its person also appears in a replay frame of that action; every other crop
    (replays, unmatched action-frame boxes) goes to the gallery."""
    positions = _frame_positions(crops)
    in_replay = {(c.group, c.uid) for c in crops if positions[(c.group, c.frame)] > 0}
    query, gallery = [], []
    for crop in crops:
        is_action_frame = positions[(crop.group, crop.frame)] == 0
        if is_action_frame and (crop.group, crop.uid) in in_replay:
            query.append(crop)
        else:
            gallery.append(crop)
    return query, gallery


def read_soccernet_train(split_dir: str | Path) -> tuple[list[Sample], int]:
    """Training samples of an unsplit SoccerNet split folder -> (samples, number of identities)."""
    root = _require_dir(Path(split_dir), "SoccerNet split")
    crops = _scan_soccernet_actions(root)
    labels = _relabel(crops)
    samples = _to_samples(crops, labels, _frame_positions(crops))
    logger.info("SoccerNet %s: %d train crops, %d identities", root, len(samples), len(labels))
    return samples, len(labels)


def read_soccernet_eval(split_dir: str | Path) -> tuple[list[Sample], list[Sample]]:
    """(query, gallery) of a labelled SoccerNet split folder (valid/test).

    Uses the official query/ and gallery/ sub-folders when present, otherwise derives them with
    :func:`split_query_gallery`. pids are relabelled over (action, person_uid) jointly for both lists.
    """
    root = _require_dir(Path(split_dir), "SoccerNet split")
    if (root / "query").is_dir() and (root / "gallery").is_dir():
        query_crops = _scan_soccernet_actions(root / "query")
        gallery_crops = _scan_soccernet_actions(root / "gallery")
    else:
        query_crops, gallery_crops = split_query_gallery(_scan_soccernet_actions(root))
    everything = [*query_crops, *gallery_crops]
    labels = _relabel(everything)
    positions = _frame_positions(everything)
    query = _to_samples(query_crops, labels, positions)
    gallery = _to_samples(gallery_crops, labels, positions)
    logger.info("SoccerNet %s: %d queries, %d gallery crops", root, len(query), len(gallery))
    return query, gallery


def read_soccernet_challenge(split_dir: str | Path) -> tuple[list[Sample], list[Sample]]:
    """(query, gallery) of the challenge split: flat folders of ``bbox_idx-action_idx-HxW.png``.

    Labels are hidden, so pid is ``UNLABELLED_PID``; group is the action_idx as text; camid is 0 for
    queries and 1 for gallery items. bbox_idx (needed to export rankings) is in the file name.
    """
    root = _require_dir(Path(split_dir), "SoccerNet challenge split")
    lists: list[list[Sample]] = []
    for part, camid in (("query", 0), ("gallery", 1)):
        folder = _require_dir(root / part, f"challenge {part}")
        named = [(parse_soccernet_name(p.name), p) for p in _image_files(folder)]
        named.sort(key=lambda item: item[0].bbox_idx)
        lists.append([Sample(p, UNLABELLED_PID, camid, str(n.action_idx)) for n, p in named])
    return lists[0], lists[1]


def read_soccernet(
    root: str | Path, eval_split: str = "valid", train_split: str | None = "train"
) -> ReidSplit:
    """SoccerNet-ReID: training crops from ``root/train_split`` (skipped when None or absent) and
    query/gallery from ``root/eval_split`` (valid, test or challenge)."""
    root = _require_dir(Path(root), "SoccerNet root")
    if eval_split not in SOCCERNET_SPLITS[1:]:
        raise ValueError(f"eval_split must be one of {SOCCERNET_SPLITS[1:]}, got {eval_split!r}")
    train: list[Sample] = []
    num_train_pids = 0
    if train_split is not None and (root / train_split).is_dir():
        train, num_train_pids = read_soccernet_train(root / train_split)
    if eval_split == "challenge":
        query, gallery = read_soccernet_challenge(root / eval_split)
    else:
        query, gallery = read_soccernet_eval(root / eval_split)
    return ReidSplit(f"soccernet/{eval_split}", train, query, gallery, num_train_pids)


def subsample_train(samples: Sequence[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], int]:
    """A seeded share of the training set in whole units, pids relabelled 0..N-1 -> (samples, identities).

    The unit is the ranking group (a SoccerNet action: its identities only exist inside it) where samples have
    groups, else the identity. round(fraction * units) units are drawn (at least one), without replacement.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    by_group = any(s.group for s in samples)
    units = sorted({s.group if by_group else s.pid for s in samples}, key=str)
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        count = max(1, round(fraction * len(units)))
        chosen = {units[i] for i in rng.choice(len(units), size=count, replace=False)}
        samples = [s for s in samples if (s.group if by_group else s.pid) in chosen]
        logger.info("training on %d of %d %s (fraction %.3f, seed %d): %d crops", count, len(units),
                    "actions" if by_group else "identities", fraction, seed, len(samples))
    labels: dict[int, int] = {}
    for sample in samples:
        labels.setdefault(sample.pid, len(labels))
    return [replace(s, pid=labels[s.pid]) for s in samples], len(labels)


# ------------------------------------------------------------------------------------------- Market-1501

_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _read_market_folder(folder: Path) -> list[tuple[Path, int, int]]:
    items = []
    for path in _image_files(folder):
        match = _MARKET_NAME.match(path.name)
        if match is None:
            raise ValueError(f"not a Market-1501-style file name (<pid>_c<cam>...): {path}")
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            continue  # "junk" detections: excluded by the Market protocol
        if cam < 1:
            raise ValueError(f"camera numbers start at 1 in Market-style names: {path}")
        items.append((path, pid, cam - 1))
    return items


def read_market1501(
    root: str | Path,
    train_dir: str = "bounding_box_train",
    query_dir: str = "query",
    gallery_dir: str = "bounding_box_test",
) -> ReidSplit:
    """Market-1501-style folders of ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg`` (DukeMTMC uses the same
    pattern). pid -1 (junk) is dropped, pid 0 (distractors) kept; camid = camera - 1; train pids are
    relabelled 0..N-1, query/gallery pids kept as written."""
    root = _require_dir(Path(root), "Market-1501 root")
    raw_train = _read_market_folder(_require_dir(root / train_dir, "train"))
    labels: dict[int, int] = {}
    for _, pid, _ in raw_train:
        labels.setdefault(pid, len(labels))
    train = [Sample(p, labels[pid], cam, "", str(pid)) for p, pid, cam in raw_train]
    query, gallery = (
        [Sample(p, pid, cam, "", str(pid)) for p, pid, cam in _read_market_folder(_require_dir(root / d, d))]
        for d in (query_dir, gallery_dir)
    )
    logger.info("Market-style %s: %d train (%d ids), %d query, %d gallery",
                root, len(train), len(labels), len(query), len(gallery))
    return ReidSplit("market1501", train, query, gallery, len(labels))


# ----------------------------------------------------------------------------------------------- CUHK03

_CUHK03_NAME = re.compile(r"^(\d+)_(\d+)$")
CUHK03_SHOTS_PER_CAMERA = 5


def read_cuhk03(
    images_dir: str | Path,
    train_pids: tuple[int, int] | None = (0, 1000),
    eval_pids: tuple[int, int] | None = (1000, 1467),
    query_camid: int = 1,
) -> ReidSplit:
    """CUHK03-style flat folder of ``<pid>_<idx>.jpg``: idx 0-4 camera A (camid 0), 5-9 camera B (camid 1).

    ``train_pids`` / ``eval_pids`` are half-open [low, high) ranges of raw pids (None: no such list).
    Evaluation images of camera ``query_camid`` are queries, those of the other camera the gallery.
    Train pids are relabelled 0..N-1; query/gallery pids are kept raw.
    """
    folder = _require_dir(Path(images_dir), "CUHK03 images")
    if query_camid not in (0, 1):
        raise ValueError(f"query_camid must be 0 (camera A) or 1 (camera B), got {query_camid}")
    for name, rng in (("train_pids", train_pids), ("eval_pids", eval_pids)):
        if rng is not None and not 0 <= rng[0] < rng[1]:
            raise ValueError(f"{name} must be a range [low, high) with 0 <= low < high, got {rng}")
    if train_pids and eval_pids and train_pids[0] < eval_pids[1] and eval_pids[0] < train_pids[1]:
        raise ValueError(f"train_pids {train_pids} and eval_pids {eval_pids} overlap")

    def inside(pid: int, rng: tuple[int, int] | None) -> bool:
        return rng is not None and rng[0] <= pid < rng[1]

    train_raw: list[tuple[Path, int, int]] = []
    query: list[Sample] = []
    gallery: list[Sample] = []
    for path in _image_files(folder):
        match = _CUHK03_NAME.match(path.stem)
        if match is None:
            raise ValueError(f"not a CUHK03-style file name (<pid>_<idx>): {path}")
        pid, idx = int(match.group(1)), int(match.group(2))
        if not 0 <= idx < 2 * CUHK03_SHOTS_PER_CAMERA:
            raise ValueError(f"CUHK03 image index must be 0-9, got {idx}: {path}")
        camid = idx // CUHK03_SHOTS_PER_CAMERA
        if inside(pid, train_pids):
            train_raw.append((path, pid, camid))
        elif inside(pid, eval_pids):
            (query if camid == query_camid else gallery).append(Sample(path, pid, camid, "", str(pid)))
    labels: dict[int, int] = {}
    for _, pid, _ in sorted(train_raw, key=lambda item: item[1]):
        labels.setdefault(pid, len(labels))
    train = [Sample(p, labels[pid], cam, "", str(pid)) for p, pid, cam in train_raw]
    logger.info("CUHK03 %s: %d train (%d ids), %d query, %d gallery",
                folder, len(train), len(labels), len(query), len(gallery))
    return ReidSplit("cuhk03", train, query, gallery, len(labels))


# --------------------------------------------------------------------------------- folder per person


def read_folder(root: str | Path) -> ReidSplit:
    """Users' own crops: ``root/<label>/<image files>``, one subfolder per person.

    Each person's images (sorted by name) are split in two: the first half (rounded up) is the gallery
    (camid 0), the rest are queries (camid 1). A person with a single image gives only a gallery crop. pids
    are 0..N-1 in label order, ``raw_pid`` is the folder name; there is no training list.
    """
    folder = _require_dir(Path(root), "crop folder")
    query: list[Sample] = []
    gallery: list[Sample] = []
    labels = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    pid = 0
    for label_dir in labels:
        images = _image_files(label_dir)
        if not images:
            continue
        half = (len(images) + 1) // 2
        gallery += [Sample(p, pid, 0, "", label_dir.name) for p in images[:half]]
        query += [Sample(p, pid, 1, "", label_dir.name) for p in images[half:]]
        pid += 1
    if pid == 0:
        raise FileNotFoundError(f"no <label>/<image> subfolders with images in {folder}")
    logger.info("folder %s: %d people, %d query, %d gallery", folder, pid, len(query), len(gallery))
    return ReidSplit("folder", [], query, gallery, 0)


READERS: dict[str, Callable[..., ReidSplit]] = {
    "soccernet": read_soccernet,
    "market1501": read_market1501,
    "cuhk03": read_cuhk03,
    "folder": read_folder,
}


def read_split(kind: str, root: str | Path, **options: object) -> ReidSplit:
    """Dispatch to a reader by name; an unknown name lists the valid ones."""
    try:
        reader = READERS[kind]
    except KeyError:
        raise ValueError(f"unknown data set kind {kind!r}; valid: {sorted(READERS)}") from None
    return reader(root, **options)


# ------------------------------------------------------------------------------------------------ Dataset


class ReidImageDataset(Dataset[tuple[torch.Tensor, int, int, int]]):
    """Samples -> (image (3, H, W) float in [0, 1], pid, camid, index into ``samples``)."""

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform if transform is not None else eval_transform((256, 128))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        sample = self.samples[index]
        return self.transform(load_rgb(sample.path)), sample.pid, sample.camid, index

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.group for s in self.samples]
