"""Static checks of the container deployment (docker-compose.yml, deploy/Dockerfile*).

These assert what an operator relies on: Redis persistence and health gating,
loopback-only publishing, mandatory API keys, persistent /data, pinned CPU torch,
non-root runtime. If the `docker compose` plugin is installed, the compose file is
also validated by compose itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE_CPU = ROOT / "deploy" / "Dockerfile"
DOCKERFILE_GPU = ROOT / "deploy" / "Dockerfile.gpu"

TORCH_PIN = "torch==2.13.0"
# Services that run the ERS server and therefore bind 0.0.0.0 inside the container.
ERS_SERVICES = ("api", "api-gpu")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} missing"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _service(compose: dict, name: str) -> dict:
    services = compose["services"]
    assert name in services, f"service {name!r} missing from docker-compose.yml"
    return services[name]


def _as_argv(value: str | list) -> list[str]:
    """Compose `command` / healthcheck `test` may be a string or a list."""
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _environment(svc: dict) -> dict[str, str | None]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, val = str(item).partition("=")
            out[key] = val if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def _volume_mounts(svc: dict) -> dict[str, tuple[str, str | None]]:
    """target -> (type, source) for short and long volume syntax."""
    mounts: dict[str, tuple[str, str | None]] = {}
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            if len(parts) == 1:  # anonymous volume
                mounts[parts[0]] = ("volume", None)
                continue
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            mounts[target] = (kind, source)
        else:
            mounts[vol["target"]] = (vol.get("type", "volume"), vol.get("source"))
    return mounts


def _published_ports(svc: dict) -> list[tuple[str | None, str]]:
    """(host_ip, container_port) for every published port, short or long syntax."""
    out: list[tuple[str | None, str]] = []
    for port in svc.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip"), str(port["target"])))
            continue
        spec = str(port).split("/")[0]
        if spec.startswith("["):  # [ipv6]:host:container
            host_ip, _, rest = spec[1:].partition("]:")
            out.append((host_ip, rest.rsplit(":", 1)[-1]))
            continue
        parts = spec.split(":")
        host_ip = parts[0] if len(parts) == 3 else None
        out.append((host_ip, parts[-1]))
    return out


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuations joined."""
    assert path.is_file(), f"{path} missing"
    instructions: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue  # comment (or parser directive) lines, also inside continuations
        if not line and not buf:
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            keyword, _, args = buf.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
        buf = ""
    if buf.strip():
        keyword, _, args = buf.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def _exec_or_shell(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def _healthcheck_cmd(args: str) -> list[str]:
    """argv of `HEALTHCHECK [--option=value ...] CMD ...`."""
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.+)", args.strip(), flags=re.DOTALL | re.IGNORECASE)
    assert match, f"HEALTHCHECK without CMD: {args!r}"
    return _exec_or_shell(match.group(1))


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


def test_services_exist(compose):
    for name in ("redis", "api"):
        _service(compose, name)


def test_redis_persists_with_aof(compose):
    redis = _service(compose, "redis")
    assert str(redis.get("image", "")).startswith("redis:7")
    argv = _as_argv(redis["command"])
    joined = " ".join(argv)
    assert re.search(r"--appendonly\s+yes\b", joined), f"AOF not enabled: {argv}"
    assert re.search(r"--appendfsync\s+everysec\b", joined), argv
    kind, source = _volume_mounts(redis).get("/data", (None, None))
    assert kind == "volume" and source, "redis /data must be a named volume"
    assert source in (compose.get("volumes") or {}), f"volume {source!r} not declared"


def test_redis_has_healthcheck(compose):
    hc = _service(compose, "redis").get("healthcheck")
    assert hc and not hc.get("disable"), "redis needs a healthcheck"
    argv = _as_argv(hc["test"])
    assert "redis-cli" in argv and "ping" in argv, argv


def test_redis_not_published(compose):
    # Redis has no auth here; it must only be reachable on the compose network.
    redis = _service(compose, "redis")
    for host_ip, _ in _published_ports(redis):
        assert host_ip in ("127.0.0.1", "::1", "localhost"), redis["ports"]


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_waits_for_healthy_redis(compose, name):
    depends = _service(compose, name).get("depends_on")
    assert isinstance(depends, dict), "depends_on must use the long form with a condition"
    assert depends.get("redis", {}).get("condition") == "service_healthy", depends


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_healthcheck_uses_readyz(compose, name):
    hc = _service(compose, name).get("healthcheck")
    assert hc and not hc.get("disable"), f"{name} needs a healthcheck"
    assert "/readyz" in " ".join(_as_argv(hc["test"])), hc["test"]


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_data_volume(compose, name):
    svc = _service(compose, name)
    kind, source = _volume_mounts(svc).get("/data", (None, None))
    assert kind == "volume" and source, f"{name}: /data must be a named volume"
    assert source in (compose.get("volumes") or {}), f"volume {source!r} not declared"
    assert _environment(svc).get("ERS_DATA_DIR") == "/data"


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_published_on_loopback_only(compose, name):
    svc = _service(compose, name)
    assert svc.get("network_mode") != "host"
    ports = _published_ports(svc)
    assert ports, f"{name} publishes no port"
    for host_ip, target in ports:
        assert host_ip == "127.0.0.1", f"{name} publishes {svc['ports']} beyond loopback"
        assert target == "8080"


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_points_at_redis_service(compose, name):
    url = urlparse(_environment(_service(compose, name)).get("ERS_REDIS_URL") or "")
    assert url.scheme == "redis" and url.hostname == "redis", url.geturl()
    assert (url.port or 6379) == 6379
    assert "redis" in compose["services"]


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_requires_api_keys(compose, name):
    value = _environment(_service(compose, name)).get("ERS_API_KEYS")
    # `${VAR:?msg}` makes compose refuse to start when ERS_API_KEYS is unset or empty.
    assert value and re.fullmatch(r"\$\{ERS_API_KEYS:\?[^}]*\}", value), value


@pytest.mark.parametrize("name", ERS_SERVICES)
def test_api_restarts(compose, name):
    assert _service(compose, name).get("restart") == "unless-stopped"


def test_api_builds_cpu_dockerfile(compose):
    build = _service(compose, "api")["build"]
    assert build.get("context") in (".", "./")
    assert build.get("dockerfile") == "deploy/Dockerfile"
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_api_gpu_is_optional_profile(compose):
    svc = _service(compose, "api-gpu")
    assert "gpu" in svc.get("profiles", [])
    assert svc["build"].get("dockerfile") == "deploy/Dockerfile.gpu"
    assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "profiles" not in _service(compose, "api"), "the CPU api must start by default"


def test_api_services_do_not_collide(compose):
    # `docker compose --profile gpu up` starts both: no shared host port / data dir.
    api, gpu = _service(compose, "api"), _service(compose, "api-gpu")
    assert {p for p in api["ports"]}.isdisjoint(gpu["ports"])
    assert _volume_mounts(api)["/data"] != _volume_mounts(gpu)["/data"]
    assert _environment(api)["ERS_REDIS_URL"] != _environment(gpu)["ERS_REDIS_URL"]


# ---------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------

DOCKERFILES = pytest.mark.parametrize("path", [DOCKERFILE_CPU, DOCKERFILE_GPU], ids=["cpu", "gpu"])


@DOCKERFILES
def test_dockerfile_pins_torch_before_project(path):
    runs = [args for kw, args in _dockerfile_instructions(path) if kw == "RUN"]
    torch_idx = [i for i, r in enumerate(runs) if re.search(r"pip install\b.*\btorch==", r)]
    project_idx = [i for i, r in enumerate(runs) if re.search(r"pip install\b.*\s'?\.(\[\w+\])?'?(\s|$)", r)]
    assert torch_idx, f"{path.name}: no RUN installing torch"
    assert project_idx, f"{path.name}: no RUN `pip install .`"
    for i in torch_idx:
        assert TORCH_PIN in runs[i].split(), runs[i]
    assert min(torch_idx) < min(project_idx), "torch must be installed before the project"


def test_cpu_dockerfile_uses_cpu_torch_and_slim_base():
    instr = _dockerfile_instructions(DOCKERFILE_CPU)
    froms = [args.split()[0] for kw, args in instr if kw == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    torch_runs = [a for kw, a in instr if kw == "RUN" and re.search(r"pip install\b.*\btorch==", a)]
    assert torch_runs and all("download.pytorch.org/whl/cpu" in r for r in torch_runs)
    assert not any("[gpu]" in a for kw, a in instr if kw == "RUN")


def test_gpu_dockerfile_uses_cuda12_and_gpu_extra():
    instr = _dockerfile_instructions(DOCKERFILE_GPU)
    froms = [args.split()[0] for kw, args in instr if kw == "FROM"]
    assert froms[0].startswith("nvidia/cuda:12."), froms
    runs = " ".join(a for kw, a in instr if kw == "RUN")
    assert "python3.11" in runs
    # faiss-cpu/onnxruntime share import names with the GPU builds: they must be removed first.
    assert "pip uninstall -y faiss-cpu onnxruntime" in runs
    assert re.search(r"pip install\b.*faiss-gpu-cu12.*onnxruntime-gpu", runs), "GPU image must install the GPU builds"


@DOCKERFILES
def test_dockerfile_exposes_port_and_data_volume(path):
    final = _final_stage(_dockerfile_instructions(path))
    exposed = [p for kw, a in final if kw == "EXPOSE" for p in a.split()]
    assert "8080" in exposed or "8080/tcp" in exposed, exposed
    volumes = [v for kw, a in final if kw == "VOLUME" for v in _exec_or_shell(a)]
    assert "/data" in volumes, volumes


@DOCKERFILES
def test_dockerfile_healthcheck(path):
    checks = [a for kw, a in _final_stage(_dockerfile_instructions(path)) if kw == "HEALTHCHECK"]
    assert len(checks) == 1, f"{path.name}: expected one HEALTHCHECK"
    argv = _healthcheck_cmd(checks[0])
    assert "/healthz" in " ".join(argv), argv
    # curl/wget are not in the slim images.
    assert argv[0] in ("python", "python3", "python3.11", "/opt/venv/bin/python"), argv


@DOCKERFILES
def test_dockerfile_runs_ers_serve(path):
    cmds = [a for kw, a in _final_stage(_dockerfile_instructions(path)) if kw == "CMD"]
    assert cmds, f"{path.name}: no CMD"
    argv = _exec_or_shell(cmds[-1])
    assert argv[:2] == ["ers", "serve"], argv
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert opts.get("--data-dir") == "/data", argv
    assert opts.get("--port") == "8080", argv
    assert opts.get("--host") == "0.0.0.0", argv


@DOCKERFILES
def test_dockerfile_runs_as_non_root(path):
    users = [a for kw, a in _final_stage(_dockerfile_instructions(path)) if kw == "USER"]
    assert users, f"{path.name}: no USER in the final stage (would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


# ---------------------------------------------------------------------------
# compose's own validation (only where the compose plugin is installed)
# ---------------------------------------------------------------------------


def _docker_compose_available() -> bool:
    """True only for a real compose plugin with a `config` subcommand.

    Without the plugin, `docker compose ...` is not a reliable probe: the docker CLI
    may print its own help (exit 0) or fall through to the unrelated swarm
    `docker config` command, so check both version output and `config --help`.
    """
    if shutil.which("docker") is None:
        return False
    try:
        version = subprocess.run(
            ["docker", "compose", "version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if version.returncode != 0 or "compose" not in version.stdout.lower():
            return False
        helptext = subprocess.run(
            ["docker", "compose", "config", "--help"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    out = helptext.stdout
    return helptext.returncode == 0 and "docker compose config" in out and "--quiet" in out


def test_docker_compose_config_validates():
    if not _docker_compose_available():
        pytest.skip("`docker compose` plugin not installed; compose CLI validation skipped")
    env = {**os.environ, "ERS_API_KEYS": "test-key-1,test-key-2"}
    for extra in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), *extra, "config", "-q"],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr or result.stdout
