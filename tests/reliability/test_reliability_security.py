"""Security against a real uvicorn process: the API key (X-API-Key or Authorization: Bearer, compared in constant
time) on every mutating and query route, body/part size limits, collection and id validation, and no pickle ever
loaded by the service (a pickle-bearing REID_CHECKPOINT fails the start cleanly without being executed).
Non-root in the image is checked by tests/test_deployment.py::test_image_runs_as_a_non_root_user.
"""

from __future__ import annotations

import ast
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import ServerFactory
from tests.support.images import files_field, player_png
from tests.support.live_server import REPO_ROOT, LiveServer, ServerStartError, server_env

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

KEY = "k3y-with-enough-entropy-42"

GUARDED = [
    ("GET", "/gallery"),
    ("GET", "/gallery/3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"),
    ("DELETE", "/gallery/3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"),
    ("GET", "/collections"),
    ("DELETE", "/collections/some-match"),
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("POST", "/gallery"),
    ("POST", "/query"),
]


def call(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "POST":
        data = {"collection": "sec", "labels": ["p0"]} if path == "/gallery" else {"collection": "sec"}
        return client.post(path, files=files_field(player_png(0)), data=data, headers=headers)
    return client.request(method, path, headers=headers)


def test_api_key_guards_every_mutating_and_query_route(make_server: ServerFactory) -> None:
    server = make_server(REID_API_KEY=KEY)
    wrong = [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": KEY[:-1]},
        {"X-API-Key": KEY + "x"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": "Bearer"},
        {"Authorization": KEY},
    ]
    refused = 0
    with server.client() as client:
        for method, path in GUARDED:
            for headers in wrong:
                response = call(client, method, path, headers)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json()["error"] == "unauthorized"
                refused += 1
        # Nothing was written by the refused requests.
        assert client.get("/collections", headers={"X-API-Key": KEY}).json() == {"collections": []}
        for method, path in GUARDED:
            for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"}):
                response = call(client, method, path, headers)
                assert response.status_code not in (401, 403), (method, path, headers, response.text)
                assert response.status_code < 500, response.text
        for path in ("/healthz", "/readyz", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s.get("scheme", s.get("name")) for s in schemes.values()} >= {"X-API-Key", "bearer"}
    print(f"[reliability] auth: {refused} wrong-key requests refused with 401 over {len(GUARDED)} routes")


def test_prometheus_can_scrape_metrics_with_a_bearer_token(make_server: ServerFactory) -> None:
    server = make_server(REID_API_KEY=KEY)
    with server.client() as client:
        assert client.get("/metrics").status_code == 401
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert scraped.status_code == 200
    assert "reid_queue_depth" in scraped.text


def test_key_comparison_is_constant_time() -> None:
    """Both headers go through hmac.compare_digest; no ==/!= on the key anywhere in the service."""
    source = (REPO_ROOT / "service" / "http" / "deps.py").read_text()
    assert source.count("hmac.compare_digest(") >= 1
    for path in (REPO_ROOT / "service").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(node)}
                assert not names & {"api_key", "expected", "token", "key"}, f"{path.name}:{node.lineno}"


def test_size_limits_and_name_validation_over_real_sockets(make_server: ServerFactory) -> None:
    server = make_server(REID_MAX_UPLOAD_BYTES="200000", REID_MAX_FILE_BYTES="50000", REID_MAX_FILES="3")
    with server.client() as client:
        big_body = client.post(
            "/gallery", files=files_field(b"\0" * 300_000), data={"collection": "c", "labels": ["a"]}
        )
        assert big_body.status_code == 413 and big_body.json()["error"] == "payload_too_large"
        big_part = client.post(
            "/gallery",
            files=files_field(player_png(0), b"\x89PNG" + b"\0" * 60_000),
            data={"collection": "c"} | {"labels": ["a", "b"]},
        )
        assert big_part.status_code == 413 and big_part.json()["error"] == "file_too_large", big_part.text
        many = client.post(
            "/gallery",
            files=files_field(*(player_png(i) for i in range(4))),
            data={"collection": "c", "labels": list("abcd")},
        )
        assert many.status_code == 413 and many.json()["error"] == "too_many_files"
        for name in ("../etc", "a b", "x" * 65, "", "semi;colon", "ü", "a/b", "%2e%2e"):
            response = client.post(
                "/gallery", files=files_field(player_png(0)), data={"collection": name, "labels": ["a"]}
            )
            assert response.status_code == 422, (name, response.text)
            assert response.json()["error"] == "validation_error"
        for bad_id in ("1", "not-a-uuid", "3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f7", "' OR 1=1 --"):
            assert client.get(f"/gallery/{bad_id}").status_code == 422, bad_id
            assert client.delete(f"/gallery/{bad_id}").status_code == 422, bad_id
        for bad_name in ("a b", "x" * 65, "semi;colon"):
            assert client.delete(f"/collections/{bad_name}").status_code in (404, 422), bad_name
        assert client.get("/collections").json() == {"collections": []}, "a refused request stored something"
    assert "Traceback" not in server.logs()


def test_service_never_loads_pickle() -> None:
    """No pickle/torch.load/np.load(allow_pickle) in service/: checkpoints are safetensors only."""
    offenders = []
    for path in sorted((REPO_ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve") for m in modules):
                    offenders.append(f"{path.name}:{node.lineno} imports {modules}")
            if isinstance(node, ast.Call):
                func = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if func.endswith("torch.load") and keywords.get("weights_only") != "True":
                    offenders.append(f"{path.name}:{node.lineno} {func} without weights_only=True")
                if func.endswith(("pickle.load", "pickle.loads", "load_state_dict_from_url")):
                    offenders.append(f"{path.name}:{node.lineno} {func}")
                if func.endswith("np.load") and keywords.get("allow_pickle") not in (None, "False"):
                    offenders.append(f"{path.name}:{node.lineno} {func} with allow_pickle")
    assert not offenders, offenders


class _Marker:
    """Unpickling this runs ``open(marker, "w")``: the file appears only if someone executes the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["pth", "pickle_named_safetensors"])
def test_pickle_checkpoint_fails_start_without_running_it(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "pth":
        import torch

        checkpoint = tmp_path / "model.pth"
        torch.save({"state_dict": _Marker(marker)}, checkpoint)
    else:
        checkpoint = tmp_path / "model.safetensors"
        checkpoint.write_bytes(pickle.dumps({"state_dict": _Marker(marker)}))
    # The trap works: plain unpickling (in a child process) does create its marker.
    probe, probe_pickle = tmp_path / "probe", tmp_path / "probe.pickle"
    probe_pickle.write_bytes(pickle.dumps(_Marker(probe)))
    loader = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", loader, str(probe_pickle)], check=True, capture_output=True)
    assert probe.exists()

    server = LiveServer(server_env(checkpoint, tmp_path / "data"), log_path=tmp_path / "server.log")
    with pytest.raises(ServerStartError):
        server.start()
    code = server.process.wait(30) if server.process is not None else None
    server.stop()
    assert code not in (0, None), code
    log = server.logs()
    assert "CheckpointError" in log and "not a readable .safetensors file" in log, log[-3000:]
    assert not marker.exists(), "the service executed the pickle"
    print(f"[reliability] pickle checkpoint ({kind}): start refused with exit code {code}, marker never created")
