"""Real Milvus servers for tests and benchmarks: start, kill -9 and restart them on a loopback port.

Two kinds, one interface (``uri``, ``start``, ``kill``, ``stop``, ``running``, ``tail``):

- ``MilvusStandaloneServer``: the Milvus 2.3 standalone server (query node, data node, coordinators, embedded etcd,
  RocksMQ and local storage in one process) that the PyPI package ``milvus`` ships (dev extra). This is the server a
  deployment runs (compose profile ``scale`` runs the same server with external etcd and MinIO); where it and Milvus
  Lite disagree, it decides.
- ``MilvusLiteServer``: Milvus Lite's gRPC server (``milvus-lite server``), a separate embedded engine.

    with MilvusStandaloneServer(tmp_path / "milvus") as server:
        env = {"REID_GALLERY_BACKEND": "milvus", "REID_MILVUS_URI": server.uri}
        server.kill()       # SIGKILL: no shutdown, as in a crash
        server.start()      # same ports, same data folder

The standalone binaries are unpacked once into a cache folder (``REID_TEST_MILVUS_CACHE``, default
``~/.cache/reid-tests``) and shared by every data folder; each server gets its own free ports for all of its
components, so several run side by side.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Protocol

import grpc
import httpx

from tests.support.live_server import free_port

logger = logging.getLogger(__name__)

# The ports the standalone server's config template names (milvus 2.3.5's config.yaml.template).
_PORT_KEYS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)


class MilvusServerError(RuntimeError):
    """The server exited or did not answer in time; the message carries the end of its log."""


class MilvusProcess(Protocol):
    """What tests need from a Milvus server, whichever kind."""

    kind: str

    @property
    def uri(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> MilvusProcess: ...

    def kill(self) -> None: ...

    def stop(self, timeout_s: float = 20.0) -> None: ...

    def tail(self, lines: int = 40) -> str: ...


class _Subprocess:
    """A server subprocess in its own session, its output appended to ``log_path``."""

    kind = "?"

    def __init__(self, data_dir: Path, port: int | None, ready_timeout_s: float) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-milvus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _launch(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.kind} server already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd
            )

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """kill -9 of the whole process group: nothing is flushed or closed, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def _grpc_ready(self) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
                return True
            except grpc.FutureTimeoutError:
                return False

    def _wait(self, is_ready: object) -> float:
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout_s:
            if not self.running:
                raise MilvusServerError(f"{self.kind} server exited before ready:\n{self.tail()}")
            if is_ready():  # type: ignore[operator]
                return time.monotonic() - start
            time.sleep(0.2)  # polling a deadline for an external process, not ordering threads
        raise MilvusServerError(f"{self.kind} server not ready after {self.ready_timeout_s:.0f} s:\n{self.tail()}")

    def __enter__(self) -> _Subprocess:
        if not self.running:
            self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


class MilvusLiteServer(_Subprocess):
    """One ``milvus-lite server`` subprocess on a loopback port, its output in ``data_dir/../<name>-milvus.log``."""

    kind = "milvus-lite"

    def __init__(self, data_dir: Path, port: int | None = None, ready_timeout_s: float = 60.0) -> None:
        super().__init__(data_dir, port, ready_timeout_s)

    def start(self) -> MilvusLiteServer:
        """Launch the server and wait until its gRPC port accepts a channel (a deadline, not a sleep)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = Path(sys.executable).parent / "milvus-lite"
        command = [str(binary), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        self._launch(command, {**os.environ})
        self.wait_ready()
        return self

    def wait_ready(self) -> float:
        return self._wait(self._grpc_ready)


def standalone_available() -> bool:
    """Whether the ``milvus`` package (the standalone server's binaries) is installed."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return False
    return sys.platform.startswith("linux")


def _binaries() -> Path:
    """The unpacked standalone binaries (milvus and its shared libraries), unpacked once per package version."""
    import milvus

    cache = Path(os.environ.get("REID_TEST_MILVUS_CACHE", Path.home() / ".cache" / "reid-tests"))
    target = cache / f"milvus-{milvus.__version__}"
    if (target / "bin" / "milvus").is_file():
        return target / "bin"
    cache.mkdir(parents=True, exist_ok=True)
    # Unpack beside the target and rename: two test sessions starting together never see half a binary.
    scratch = Path(tempfile.mkdtemp(prefix="milvus-unpack-", dir=cache))
    try:
        milvus._initialize_data_files(str(scratch))
        try:
            scratch.rename(target)
        except OSError:  # another session won the rename
            if not (target / "bin" / "milvus").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / "bin"


class MilvusStandaloneServer(_Subprocess):
    """A Milvus 2.3 standalone server (``milvus run standalone``) with its own ports and data folder.

    Restarting after ``kill()`` reuses the ports and the data folder (etcd metadata, RocksMQ log, segments), as a
    server restarted in place does.
    """

    kind = "milvus-standalone"

    def __init__(self, data_dir: Path, port: int | None = None, ready_timeout_s: float = 120.0) -> None:
        super().__init__(data_dir, port, ready_timeout_s)
        self.ports = {key: free_port() for key in _PORT_KEYS}
        self.ports["proxy_port"] = self.port
        self.metrics_port = free_port()
        self.etcd_peer_port = free_port()
        self._configured = False

    def _write_config(self) -> None:
        from milvus import MilvusServerConfig

        if self._configured:
            return  # a restart: same ports (the config's bind probe would fail while the old sockets linger)

        config = MilvusServerConfig(data_dir=str(self.data_dir), **self.ports)
        config.resolve()  # writes data_dir/configs/milvus.yaml from the package's template with our ports
        # The embedded etcd listens on 2379/2380 unless its own config file says otherwise: one server per machine.
        etcd_client, etcd_peer = (
            f"http://127.0.0.1:{self.ports['etcd_port']}",
            f"http://127.0.0.1:{self.etcd_peer_port}",
        )
        etcd_file = self.data_dir / "configs" / "embed-etcd.yaml"
        etcd_file.write_text(
            f"name: reid-test\nlisten-client-urls: {etcd_client}\nadvertise-client-urls: {etcd_client}\n"
            f"listen-peer-urls: {etcd_peer}\ninitial-advertise-peer-urls: {etcd_peer}\n"
            f"initial-cluster: reid-test={etcd_peer}\n"
        )
        milvus_yaml = self.data_dir / "configs" / "milvus.yaml"
        text = milvus_yaml.read_text()
        text = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_file}\n", 1)
        milvus_yaml.write_text(text)
        self._configured = True

    def start(self) -> MilvusStandaloneServer:
        """Launch the server and wait until its health endpoint says OK and its gRPC port answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binaries = _binaries()
        self._write_config()
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "LD_LIBRARY_PATH": ":".join([str(binaries), os.environ.get("LD_LIBRARY_PATH", "")]),
        }
        # The server reads configs/milvus.yaml relative to its working folder.
        # --alias names the pid file (/run/milvus/standalone-<alias>.pid): one per server, not one per machine.
        command = [str(binaries / "milvus"), "run", "standalone", "--alias", f"reid-{self.port}"]
        nice = int(os.environ.get("REID_TEST_MILVUS_NICE", "0"))
        if nice:
            command = ["nice", "-n", str(nice), *command]
        self._launch(command, env, cwd=self.data_dir)
        self.wait_ready()
        return self

    def _healthy(self) -> bool:
        try:
            answer = httpx.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2.0)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and "OK" in answer.text and self._grpc_ready()

    def wait_ready(self) -> float:
        return self._wait(self._healthy)


def start_milvus(kind: str, data_dir: Path) -> MilvusProcess:
    """Start a Milvus server of ``kind`` ("standalone" or "lite") on a free port with data in ``data_dir``."""
    if kind == "standalone":
        return MilvusStandaloneServer(data_dir).start()
    if kind == "lite":
        return MilvusLiteServer(data_dir).start()
    raise ValueError(f"unknown Milvus server kind {kind!r}; valid: standalone, lite")


class PrefixPool:
    """Collection prefixes on one shared server, handed out empty and wiped after use.

    Creating and loading a Milvus collection takes seconds on a standalone server (3.5 s here, two per gallery), so
    tests reuse each other's collections: after a test its rows are deleted (items, galleries, drops and model
    claims), and the prefix goes back to the pool of its embedding dimension.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._free: dict[int, list[str]] = {}
        self._made = 0

    def take(self, dim: int) -> str:
        free = self._free.get(dim)
        if free:
            return free.pop()
        self._made += 1
        return f"t{self._made}"

    def give_back(self, prefix: str) -> None:
        """Delete every row under ``prefix`` and keep its collections for the next test of the same dimension."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, timeout=30.0)
        try:
            names = set(client.list_collections())
            items, catalog = f"{prefix}_items", f"{prefix}_catalog"
            if items not in names or catalog not in names:
                for name in {items, catalog} & names:
                    client.drop_collection(name)
                return
            fields = client.describe_collection(items).get("fields", [])
            dims = [f.get("params", {}).get("dim") for f in fields if f.get("name") == "embedding"]
            client.delete(items, filter='id != ""')
            client.delete(catalog, filter='key != ""')
            # This process's later reads wait for these deletes (pymilvus keeps their timestamps per collection).
            if dims and dims[0] is not None:
                self._free.setdefault(int(dims[0]), []).append(prefix)
        finally:
            client.close()
