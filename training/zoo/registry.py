"""The model zoo: public re-id weights this project can fetch, convert and serve, each with its provenance.

    entry = ZOO["osnet_x0_25_msmt17"]
    entry.urls[0]        # where the file is downloaded from (mirrors follow)
    entry.sha256         # pinned hash of the upstream file, or None when it could not be pinned here

Every entry is a torchreid model-zoo release (Zhou et al., https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO)
of an OSNet width that model/osnet.py builds, so the strict importer (model/torchreid_import.py) converts it.
``reid-fetch --list`` prints this table; ``reid-fetch NAME`` downloads, checks and converts one entry.

Licences: torchreid's code is MIT and its model-zoo weights are published with it without other terms; the
training data sets are research-use-only, and a model trained on them carries that caveat (see ``data_terms``).
``published`` holds the upstream authors' own numbers on the training data set's test split; ``measured`` holds
what this project measured itself (benchmarks/zoo_cuhk03.py, benchmarks/results/zoo_cuhk03.json), else None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MODEL_ZOO_PAGE = "https://kaiyangzhou.github.io/deep-person-reid/MODEL_ZOO"
HF_REPO_PAGE = "https://huggingface.co/kaiyangzhou/osnet"
WEIGHTS_LICENCE = "MIT (torchreid, Kaiyang Zhou; the model-zoo weights are released with the MIT-licensed code)"
MARKET_TERMS = "Market-1501: research use only, no redistribution (data set terms)"
MSMT17_TERMS = "MSMT17: non-commercial research use only (MSMT17 release agreement)"
# How this project measured ``measured``: benchmarks/zoo_cuhk03.py, numbers from benchmarks/results/zoo_cuhk03.json
# rounded to 3 decimals (tests/training/zoo/test_zoo.py keeps them equal).
MEASURED_PROTOCOL = (
    "CUHK03 (not in the training data), gallery of the first 100 / all 1,467 people: camera-A crop _00 registered "
    "through POST /gallery, camera-B crop _05 queried through POST /query, rank-1 of the service's answer"
)


def _drive(file_id: str) -> str:
    """Direct-download form of a Google Drive file link (what the torchreid model-zoo page links to)."""
    return f"https://drive.google.com/uc?export=download&id={file_id}"


def _hf(file_name: str) -> str:
    """The torchreid author's Hugging Face mirror (huggingface.co/kaiyangzhou/osnet)."""
    return f"https://huggingface.co/kaiyangzhou/osnet/resolve/main/{file_name}"


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable set of weights and everything a model card needs to say about it."""

    name: str
    architecture: str
    file_name: str  # the upstream file name (also the name looked up under a mirror, see training/zoo/fetch.py)
    urls: tuple[str, ...]  # tried in order
    source_page: str
    training_data: str
    num_classes: int  # classifier rows in the file: a cheap check that the right file arrived
    data_terms: str
    sha256: str | None = None
    weights_licence: str = WEIGHTS_LICENCE
    input_size: tuple[int, int] = (256, 128)  # (height, width) the weights were trained at
    published: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] | None = None

    def card(self) -> dict[str, Any]:
        """The registry facts that go into a checkpoint's provenance (the fetch adds what it observed)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "source_file": self.file_name,
            "source_page": self.source_page,
            "training_data": self.training_data,
            "weights_licence": self.weights_licence,
            "data_terms": self.data_terms,
            "input_size": list(self.input_size),
            "published_metrics": dict(self.published),
        }


def _same_domain(
    arch: str,
    data: str,
    file_id: str,
    rank1: float,
    mAP: float,
    sha256: str | None = None,
    measured: dict[str, Any] | None = None,
) -> ZooEntry:
    """A torchreid "same-domain" release: trained on the train split of Market-1501 or MSMT17 alone."""
    market = data == "market1501"
    # x1.0/x0.75 were trained 150 epochs at lr 0.0015, batch 64; x0.5/x0.25 180 epochs at lr 0.003, batch 128.
    recipe = "ep150_stp60_lr0.0015_b64" if arch in ("osnet_x1_0", "osnet_x0_75") else "ep180_stp80_lr0.003_b128"
    short = "market" if market else "msmt17"
    return ZooEntry(
        name=f"{arch}_{data}",
        architecture=arch,
        file_name=f"{arch}_{short}_256x128_amsgrad_{recipe}_fb10_softmax_labelsmooth_flip.pth",
        urls=(_drive(file_id),),
        source_page=MODEL_ZOO_PAGE,
        training_data="Market-1501 train split (751 identities)" if market else "MSMT17 train split (1,041 identities)",
        num_classes=751 if market else 1041,
        data_terms=MARKET_TERMS if market else MSMT17_TERMS,
        sha256=sha256,
        published={"dataset": "market1501" if market else "msmt17", "rank1": rank1, "mAP": mAP},
        measured=measured,
    )


def _combineall(arch: str, drive_id: str, rank1: float, mAP: float) -> ZooEntry:
    """A torchreid MSMT17 ``combineall=True`` release (train + query + gallery identities), meant for transfer."""
    recipe = "256x128_amsgrad_ep150_stp60_lr0.0015_b64_fb10_softmax_labelsmooth_flip_jitter"
    file_name = f"{arch}_msmt17_combineall_{recipe}.pth"
    return ZooEntry(
        name=f"{arch}_msmt17_combineall",
        architecture=arch,
        file_name=file_name,
        urls=(_hf(file_name), _drive(drive_id)),
        source_page=HF_REPO_PAGE,
        training_data="MSMT17, all 4,101 identities (combineall: train, query and gallery)",
        num_classes=4101,
        data_terms=MSMT17_TERMS,
        published={"dataset": "msmt17->market1501", "rank1": rank1, "mAP": mAP},  # cross-domain figure
    )


# Google Drive ids and published numbers: torchreid's MODEL_ZOO page (same-domain table; MSMT17 combineall table).
# sha256 pinned only where this project hashed the file itself (the two files in ../shared/data).
_ENTRIES: tuple[ZooEntry, ...] = (
    _same_domain("osnet_x1_0", "market1501", "1vduhq5DpN2q1g4fYEZfPI17MJeh9qyrA", 0.942, 0.826),
    _same_domain("osnet_x1_0", "msmt17", "112EMUfBPYeYg70w-syK6V6Mx8-Qb9Q1M", 0.749, 0.438),
    _same_domain("osnet_x0_75", "market1501", "1ozRaDSQw_EQ8_93OUmjDbvLXw9TnfPer", 0.937, 0.812),
    _same_domain("osnet_x0_75", "msmt17", "1QEGO6WnJ-BmUzVPd3q9NoaO_GsPNlmWc", 0.728, 0.414),
    _same_domain("osnet_x0_5", "market1501", "1PLB9rgqrUM7blWrg4QlprCuPT7ILYGKT", 0.925, 0.798),
    _same_domain("osnet_x0_5", "msmt17", "1UT3AxIaDvS2PdxzZmbkLmjtiqq7AIKCv", 0.697, 0.375),
    _same_domain(
        "osnet_x0_25",
        "market1501",
        "1z1UghYvOTtjx7kEoRfmqSMu-z62J6MAj",
        0.912,
        0.750,
        sha256="c0ff09177a21417a19bc73bbf5af4eb5d2b097c2074ed35e67819ee6cd93612c",
        measured={"cuhk03_rank1_100": 0.300, "cuhk03_rank1_all": 0.074},
    ),
    _same_domain(
        "osnet_x0_25",
        "msmt17",
        "1sSwXSUlj4_tHZequ_iZ8w_Jh0VaRQMqF",
        0.614,
        0.295,
        sha256="6f57607fed9f502b9efed546108132ee715df5a5b6e6932c6269bacb47f59f99",
        measured={"cuhk03_rank1_100": 0.360, "cuhk03_rank1_all": 0.123},
    ),
    _combineall("osnet_x1_0", "1IosIFlLiulGIjwW3H8uMRmx3MzPwf86x", 0.666, 0.375),
    _combineall("osnet_x0_25", "1Kkx2zW89jq_NETu4u42CFZTMVD5Hwm6e", 0.599, 0.310),
)

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name raises KeyError listing the valid ones."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(ZOO)}") from None
