"""Settings from REID_* variables, the CLI parser, and the app before its lifespan has run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.app import create_app
from service.cli import build_parser, serve_main
from service.core.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_environment_variables_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REID_CHECKPOINT", str(tmp_path / "m.safetensors"))
    monkeypatch.setenv("REID_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("REID_DEVICE", "cuda:1")
    monkeypatch.setenv("REID_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("REID_MAX_DELAY_MS", "2.5")
    monkeypatch.setenv("REID_API_KEY", "k")
    monkeypatch.setenv("REID_THRESHOLD", "0.42")
    settings = Settings()
    assert settings.checkpoint == tmp_path / "m.safetensors"
    assert settings.database_path == tmp_path / "d" / "gallery.sqlite3"
    assert (settings.device, settings.max_batch_size, settings.max_delay_ms) == ("cuda:1", 16, 2.5)
    assert (settings.api_key, settings.threshold) == ("k", 0.42)


def test_empty_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REID_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("REID_DEVICE", "gpu"), ("REID_THRESHOLD", "1.5"), ("REID_MAX_BATCH_SIZE", "0"), ("REID_MAX_QUEUE", "many"),
     ("REID_RUNTIME", "tensorrt")],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("REID_").lower()):
        Settings()


def test_app_answers_not_ready_before_its_lifespan() -> None:
    client = TestClient(create_app(Settings(checkpoint=None)))  # no `with`: the lifespan never runs
    assert client.get("/healthz").status_code == 200
    for path in ("/readyz", "/collections", "/info"):
        response = client.get(path)
        assert response.status_code == 503 and response.json()["error"] == "not_ready", path


def test_missing_checkpoint_fails_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(checkpoint=tmp_path / "absent.safetensors", data_dir=tmp_path))
    with pytest.raises(RuntimeError, match="does not exist"), TestClient(app):
        pass


def test_cli_parser_and_missing_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "9001"])
    assert (args.host, args.port) == ("0.0.0.0", 9001)
    monkeypatch.delenv("REID_CHECKPOINT", raising=False)
    with pytest.raises(SystemExit, match="REID_CHECKPOINT"):
        serve_main(["--port", "9001"])
