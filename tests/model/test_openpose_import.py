"""reid-import-openpose on a generated file with the CMU body model's tensor names and shapes."""

from __future__ import annotations

from pathlib import Path

import torch

from model import build_model
from model.cli import import_openpose_main
from model.pose import cmu_body_key_map


def test_cmu_weights_convert_to_a_pose_stream_file_that_pose_bilinear_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cmu = {name: torch.randn(shape) * 0.01 for name, (_, shape) in cmu_body_key_map(2).items()}
    src = tmp_path / "body_pose_model.pth"
    torch.save(cmu, src)
    dst = tmp_path / "openpose_body.safetensors"
    assert import_openpose_main([str(src), str(dst), "--stages", "2"]) == 0
    model = build_model("pose_bilinear", input_size=(64, 32), embedding_dim=64, pose_stages=2,
                        pose_output="parts", pose_weights=str(dst))
    ours = dict(model.pose.named_parameters())
    for cmu_name, (our_name, _) in cmu_body_key_map(2).items():
        if our_name in ours:  # the last stage's PAF branch is not built when only part maps are read
            assert torch.equal(ours[our_name], cmu[cmu_name]), our_name
    assert "pose_weights" not in model.config


def test_a_file_missing_tensors_is_refused_without_writing(tmp_path: Path) -> None:
    table = cmu_body_key_map(2)
    cmu = {name: torch.zeros(shape) for name, (_, shape) in table.items() if "conv4_4_CPM" not in name}
    src = tmp_path / "partial.pth"
    torch.save(cmu, src)
    dst = tmp_path / "out.safetensors"
    assert import_openpose_main([str(src), str(dst), "--stages", "2"]) == 1
    assert not dst.exists()
