"""What an exported ONNX graph carries, readable without torch: input/output names, the metadata keys (the
checkpoint's spec, its sha256, the export version) and the pairing of a checkpoint with its graph.

    graph = graph_beside(Path("checkpoints/default.safetensors"))   # checkpoints/default.onnx
    spec = spec_from_metadata(metadata)                             # the model card inside the graph

model/export.py (torch) writes graphs with these keys; the service reads them through onnxruntime.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model.spec import METADATA_KEY, CheckpointError, CheckpointSpec

logger = logging.getLogger(__name__)

# Bumped whenever the exported graph changes for the same checkpoint (wrapper, opset, DFT formulation), so a
# graph cached by an older version is never served by a newer one.
EXPORT_VERSION = 1
INPUT_NAME = "crops"
OUTPUT_NAME = "embeddings"
EXPORT_VERSION_KEY = "soccernet_reid_onnx_export_version"
FINGERPRINT_KEY = "soccernet_reid_checkpoint_sha256"
SPECTRAL_KEY = "soccernet_reid_sketch_spectral"
GRAPH_SUFFIX = ".onnx"
CHECKPOINT_SUFFIX = ".safetensors"


class GraphMetadataError(CheckpointError):
    """The graph was not exported by this project, or belongs to another checkpoint than the one beside it."""


def graph_beside(checkpoint: Path) -> Path:
    """The graph that travels with ``checkpoint``: same folder and name, suffix .onnx (what reid-export writes)."""
    return checkpoint.with_suffix(GRAPH_SUFFIX)


def checkpoint_beside(graph: Path) -> Path:
    """The checkpoint a shipped graph was exported from: same folder and name, suffix .safetensors."""
    return graph.with_suffix(CHECKPOINT_SUFFIX)


def spec_from_metadata(metadata: dict[str, str], source: str = "onnx graph") -> CheckpointSpec:
    """The checkpoint spec (model card) carried in an exported graph's metadata_props."""
    if METADATA_KEY not in metadata:
        raise GraphMetadataError(f"{source}: carries no {METADATA_KEY} metadata (not exported by this project)")
    try:
        data = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise GraphMetadataError(f"{source}: spec is not valid JSON ({exc})") from exc
    return CheckpointSpec.from_dict(data, source=source)


def fingerprint_from_metadata(metadata: dict[str, str], source: str = "onnx graph") -> str:
    """The sha256 of the checkpoint the graph was exported from (64 hex digits)."""
    value = metadata.get(FINGERPRINT_KEY, "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise GraphMetadataError(
            f"{source}: no checkpoint fingerprint in its metadata ({FINGERPRINT_KEY}={value!r}); "
            "export it with reid-export --format onnx"
        )
    return value


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes | memoryview) -> list[tuple[int, int, bytes | memoryview | int]]:
    """(field number, wire type, value) of one protobuf message; length-delimited values as slices."""
    out: list[tuple[int, int, bytes | memoryview | int]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, wire, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            out.append((number, wire, data[pos : pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


# onnx.proto: ModelProto.metadata_props = 14 (repeated StringStringEntryProto {key = 1, value = 2}).
_METADATA_PROPS = 14


def read_graph_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file, read with a few lines of protobuf decoding: no onnx, no onnxruntime, and
    no session (so a start-up check costs milliseconds). GraphMetadataError when the file is not an ONNX model."""
    try:
        data = memoryview(Path(path).read_bytes())
        metadata: dict[str, str] = {}
        for number, wire, value in _fields(data):
            if number == _METADATA_PROPS and wire == 2 and not isinstance(value, int):
                entry = {n: bytes(v).decode("utf-8") for n, w, v in _fields(value) if w == 2 and not isinstance(v, int)}
                metadata[entry.get(1, "")] = entry.get(2, "")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise GraphMetadataError(f"{path}: not a readable ONNX graph ({exc})") from exc
    return metadata
