"""What share of training identities and crops one epoch of the P x K sampler uses, on SYNTHETIC SoccerNet trees.

Actions of different sizes (players_per_action 4, 6, 8, 10, 12: one tree each, 3 games x 4 actions, 3 views,
tiny 32x16 crops since only file names matter) are read together, as SoccerNet's actions differ in size.
P=8, K=4 within actions, as training/configs/soccernet.yaml samples.

    .venv/bin/python -m benchmarks.sampler_coverage --out benchmarks/results/sampler_coverage.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import (
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from training.data.readers import read_soccernet_train  # noqa: E402
from training.data.sampler import PKSampler  # noqa: E402
from training.data.synthetic import SyntheticConfig, generate_soccernet_tree  # noqa: E402

PLAYERS_PER_ACTION = (4, 6, 8, 10, 12)


def synthetic_training_set(root: Path, seed: int = 0) -> tuple[list[int], list[str]]:
    """pids and groups ("tree/league/season/game/action") of the combined SYNTHETIC training trees."""
    pids: list[int] = []
    groups: list[str] = []
    for players in PLAYERS_PER_ACTION:
        tree = root / f"players{players}"
        config = SyntheticConfig(train_games=3, valid_games=0, test_games=0, actions_per_game=4,
                                 players_per_action=players, views=3, height=32, width=16, seed=seed + players)
        generate_soccernet_tree(tree, config)
        samples, _ = read_soccernet_train(tree / "train")
        offset = max(pids, default=-1) + 1
        pids += [offset + s.pid for s in samples]
        groups += [f"players{players}/{s.group}" for s in samples]
    return pids, groups


def coverage(pids: list[int], groups: list[str], P: int, K: int, epochs: int) -> dict[str, Any]:
    """Mean over ``epochs`` of the shares of identities and crops used, and of batch slots repeating a crop."""
    identities = set(pids)
    rows = []
    for epoch in range(epochs):
        sampler = PKSampler(pids, groups, P=P, K=K, within_group=True, seed=0, num_replicas=1, rank=0)
        sampler.set_epoch(epoch)
        slots = [i for batch in sampler for i in batch]
        used = set(slots)
        rows.append({
            "identity_share": len({pids[i] for i in used}) / len(identities),
            "crop_share": len(used) / len(pids),
            "repeated_slot_share": 1 - len(used) / len(slots),
            "batches": len(slots) // (P * K),
        })
    return {key: round(sum(r[key] for r in rows) / epochs, 4) for key in rows[0]} | {
        "identities": len(identities), "crops": len(pids), "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "", "sampler_coverage.json")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    with tempfile.TemporaryDirectory() as tmp:
        pids, groups = synthetic_training_set(Path(tmp))
    result = {"P": 8, "K": 4, **coverage(pids, groups, P=8, K=4, epochs=args.epochs)}
    write_results(args.out, {"machine": machine_info(), "players_per_action": PLAYERS_PER_ACTION, "result": result})
    print(markdown_table(list(result), [list(result.values())]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
