"""Print the benchmark tables of docs/performance.md from the committed JSON results (so no number is typed by hand).

    .venv/bin/python -m benchmarks.report            # reads benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, markdown_table

logger = logging.getLogger(__name__)


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    gpu = m.get("cuda") or "no GPU"
    return (
        f"{m['date_utc'][:10]}, {m['cpu_count']} CPU cores ({m['cpu_model']}), {gpu}, load avg (1/5/15 min) at the end "
        f"{'/'.join(str(v) for v in m['load_avg_1_5_15'])}, torch {m.get('torch')}, faiss {m.get('faiss')}"
    )


def service_section(data: dict[str, Any]) -> str:
    raw, ratios = data["raw"], data["ratios"]
    top_key = next(k for k in ratios if k.startswith("batched_over_unbatched"))
    rows = [
        (p["mode"], p["max_batch_size"], p["crops_per_request"], p["concurrency"], p["requests"], p["crops_per_s"],
         p["p50_ms"], p["p95_ms"], p["p99_ms"], p["mean_batch_size"], p["errors"])
        for p in data["points"]
    ]
    table = markdown_table(
        ["mode", "max batch", "crops/request", "concurrency", "requests", "crops/s", "p50 ms", "p95 ms", "p99 ms",
         "mean batch", "errors"],
        rows,
    )
    per_batch = sorted(raw["per_batch_crops_per_s"].items(), key=lambda kv: int(kv[0]))
    threads = raw.get("threads", "?")
    raw_rows = [(f"raw model in-process, batch {b}, {threads} torch thread(s)", v) for b, v in per_batch]
    return "\n".join(
        [
            f"Machine: {_machine(data)}.",
            "",
            markdown_table(["raw model (Embedder.embed_batch)", "crops/s"], raw_rows),
            "",
            table,
            "",
            f"- service/raw at saturation: **{ratios['service_over_raw_at_saturation']:.2f}** "
            f"(best service point {ratios['saturation_point']} vs raw best {raw['best_crops_per_s']:.1f} crops/s "
            f"at batch {raw['best_batch']})",
            f"- batched/unbatched ({top_key.rsplit('_', 1)[-1]}): **{ratios[top_key]:.2f}**",
        ]
    )


def embed_section(data: dict[str, Any]) -> str:
    rows = [
        (r["architecture"], r["embedding_dim"], r["device"], r["batch"], r["channels_last"], r["autocast"] or "fp32",
         r["compiled"], r["crops_per_s"], r["ms_per_batch"])
        for r in data["rows"]
    ]
    return f"Machine: {_machine(data)}.\n\n" + markdown_table(
        ["architecture", "D", "device", "batch", "channels_last", "autocast", "compile", "crops/s", "ms/batch"], rows
    )


def index_section(data: dict[str, Any]) -> str:
    rows = [
        (r["n"], r["dim"], r["index"], r["params"], r["build_s"], r["qps"], r["recall_at_10"], r["memory_mib"],
         ("est. memory; " if r["memory_estimated"] else "") + ("" if r["status"] == "measured" else r["status"]))
        for r in data["rows"]
    ]
    return f"Machine: {_machine(data)}.\n\n" + markdown_table(
        ["N", "D", "index", "params", "build s", "queries/s", "recall@10", "memory MiB", "note"], rows
    )


def rebuild_section(data: dict[str, Any]) -> str:
    rows = [
        (r["n"], r["dim"], r["insert_s"], r["sqlite_mib"], r["rebuild_flat_only_s"], r["rebuild_service_default_s"],
         r["rebuild_service_default_kind"])
        for r in data["rebuild"]
    ]
    return f"Machine: {_machine(data)}; service index config {data.get('service_index_config')}.\n\n" + markdown_table(
        ["N", "D", "SQLite insert s", "SQLite MiB", "rebuild, flat only s", "rebuild, service defaults s",
         "index kind"],
        rows,
    )


def lifecycle_section(data: dict[str, Any]) -> str:
    row = (data["n"], data["dim"], data["hnsw_min_size"], data["build_s"], data["query_ms_p50_idle"],
           data["query_ms_p50_during_build"], data["query_ms_max_during_build"], data["restart_s_snapshot"],
           data["restart_s_rebuild"], data["restart_s_rebuild_hnsw"], data["snapshot_mib"], data["index_rss_mib"])
    return f"Machine: {_machine(data)}.\n\n" + markdown_table(
        ["N", "D", "HNSW from", "background build s", "query ms p50 idle", "query ms p50 during build",
         "query ms max during build", "restart s, snapshot", "restart s, no snapshot (serving, exact)",
         "restart s, no snapshot (HNSW back)", "snapshot MiB", "index RSS MiB"],
        [row],
    )


def profile_section(data: dict[str, Any]) -> str:
    s = data["settings"]
    http = data["http_request_ms"]
    order = ["sha256", "decode (", "resize", "to uint8", "decode_crop, 1", "decode_crop, pool", "np.stack", "to float",
             "embed_batch", "index search", "SQLite"]

    def rank(name: str) -> int:
        return next((i for i, prefix in enumerate(order) if name.startswith(prefix)), len(order))

    stages = sorted(data["stages_ms"].items(), key=lambda kv: rank(kv[0]))
    rows: list[tuple[str, float, float]] = [(k, v, v / http * 100) for k, v in stages]
    rows.append(("whole POST /query (TestClient, in-process)", http, 100.0))
    rows.append(("rest: HTTP, multipart, routing, response", data["http_overhead_ms"],
                 data["http_overhead_ms"] / http * 100))
    return (
        f"Machine: {_machine(data)}; {s['crops']} crops of {s['crop_width']}x{s['crop_height']} JPEG -> "
        f"{s['height']}x{s['width']}, gallery {s['gallery']}.\n\n"
        + markdown_table(["stage", "median ms", "% of request"], rows)
    )


def tracklet_section(data: dict[str, Any]) -> str:
    from benchmarks.tracklet_accuracy import tracklet_tables

    return f"Machine: {_machine(data)}.\n\n{tracklet_tables(data)}"


def runtime_section(data: dict[str, Any]) -> str:
    m, model = data["settings"], data["model"]
    return (
        f"Machine: {_machine(data)}; {model['checkpoint']}, input {model['input_size'][0]}x{model['input_size'][1]}, "
        f"{m['threads']} intra-op thread(s) for both runtimes, {m['duration']} s per HTTP point.\n\n"
        + markdown_table(
            ["measure", "torch", "onnxruntime", "onnxruntime / torch"],
            [(r["measure"], r["torch"], r["onnxruntime"], r["ratio"]) for r in data["rows"]],
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    sections = [
        ("service_load", "Service load", service_section),
        ("service_load_threads1", "Service load, 1 torch thread, quiet machine", service_section),
        ("embed_throughput", "Embedding throughput", embed_section),
        ("index_scale", "Index scale", index_section),
        ("index_rebuild", "Rebuild from SQLite", rebuild_section),
        ("index_lifecycle", "Index lifecycle: background build, snapshot restart", lifecycle_section),
        ("profile_hot_path", "Hot path, one 32-crop query", profile_section),
        ("profile_hot_path_large", "Hot path, one 32-crop query, large uploads", profile_section),
        ("tracklet_accuracy", "Tracklet queries on CUHK03", tracklet_section),
        ("runtime_compare_osnet_x0_25", "torch vs onnxruntime, osnet_x0_25 (Market-1501 weights)", runtime_section),
        ("runtime_compare_resnet50", "torch vs onnxruntime, resnet50 (random init)", runtime_section),
        ("profile_hot_path_onnxruntime", "Hot path, one 32-crop query, onnxruntime", profile_section),
        ("profile_hot_path_torch_1thread", "Hot path, one 32-crop query, torch (same run)", profile_section),
    ]
    for name, title, render in sections:
        data = _load(args.results, name)
        if data is None:
            logger.warning("%s.json missing: section skipped", name)
            continue
        print(f"#### {title} (`{name}.json`)\n\n{render(data)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
