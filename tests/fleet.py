"""Real replicas for tests: app processes (uvicorn c_app.main:app) on free ports, and Debian's nginx
in front of them with the repository's own deploy/nginx.conf.

    replica = Replica("r1", env, tmp_path); replica.start(); await replica.wait_ready(client)
    with nginx_in_front([r1.port, r2.port], tmp_path) as url: ...

nginx runs as a non-daemon child in a temporary prefix; it is installed with apt-get when missing
(as scripts/test does), and the tests that need it are skipped when that cannot be done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
START_TIMEOUT = 120.0  # generous: interpreters load jieba on a shared 2-core machine
_ENV_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


def replica_env(database: dict[str, object], tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only what a replica needs: no stray DATABASE_URL or LLM key from the test's environment."""
    env = {key: os.environ[key] for key in _ENV_PASSTHROUGH if key in os.environ}
    env.update({key.upper(): str(value) for key, value in database.items()})
    env.update(
        UPLOAD_DIR=str(tmp_path / "uploads"),
        # One private cache for the run's replicas: the term statistics are built once (seconds on
        # a busy machine), then loaded by every later process.
        CACHE_DIR=str(tmp_path.parent / "replica-cache"),
        LOAD_SAMPLE_KB="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Replica:
    """One app process; `name` is its REPLICA_ID (the X-Replica header)."""

    def __init__(self, name: str, env: dict[str, str], tmp_path: Path, *, cli: bool = False) -> None:
        self.name = name
        self.cli = cli  # `c-app serve` (the image's entry point) instead of `uvicorn c_app.main:app`
        self.env = {**env, "REPLICA_ID": name}
        self.cwd = tmp_path
        self.log = tmp_path / f"{name}.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "c_app.main:app", "--host", "127.0.0.1"]
        if self.cli:
            command = [sys.executable, "-m", "c_app.cli", "serve", "--host", "127.0.0.1"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        """Poll GET /ready until 200 (the process may still be loading)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.output()
            try:
                if (await client.get(f"{self.url}/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"replica {self.name} not ready:\n{self.output()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def exited(self, timeout: float = 60.0) -> int:
        """Wait for the process to end (without blocking the loop); its exit status."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            assert time.monotonic() < deadline, f"replica {self.name} did not exit:\n{self.output()}"
            await asyncio.sleep(0.05)
        return code

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def warm(client: httpx.AsyncClient, replicas: list[Replica]) -> None:
    """A replica's first scored search builds or loads the segmenter and the term statistics
    (seconds under load): done here, one replica after the other, outside any timed window."""
    memory = {"user_id": "warm-up", "content": "预热：我喜欢蓝色的杯子", "metadata": {}}
    response = await client.post(f"{replicas[0].url}/api/v1/chat/memory/add", json=memory)
    assert response.status_code == 200, response.text
    for replica in replicas:
        query = {"user_id": "warm-up", "query": "蓝色的杯子", "limit": 1}
        response = await client.post(f"{replica.url}/api/v1/chat/memory/retrieve", json=query)
        assert response.status_code == 200, response.text


def nginx_binary() -> str | None:
    """Debian's nginx, installed with apt-get when missing (as root, like scripts/test)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found or not shutil.which("apt-get"):
        return found
    install = ["apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    if subprocess.run(install, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, check=False)
        subprocess.run(install, capture_output=True, check=False)
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def render_site(ports: list[int], listen: int) -> str:
    """deploy/nginx.conf with its upstream and listen lines pointed at local ports."""
    site = NGINX_CONF.read_text(encoding="utf-8")
    upstream = "    server app:8000 max_fails=1 fail_timeout=2s;\n"
    listen_line = "    listen 8080;\n"
    assert site.count(upstream) == 1 and site.count(listen_line) == 1, "deploy/nginx.conf changed shape"
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;\n" for port in ports)
    return site.replace(upstream, servers).replace(listen_line, f"    listen 127.0.0.1:{listen};\n")


def main_conf(prefix: Path, site: Path) -> str:
    """The main context the nginx package would give (there: /etc/nginx/nginx.conf), in `prefix`."""
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    return (
        "daemon off;\nworker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"    client_body_temp_path {temp['client_body']};\n    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fastcgi']};\n    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {site};\n"
        "}\n"
    )


@contextmanager
def nginx_in_front(binary: str, ports: list[int], tmp_path: Path) -> Iterator[str]:
    """nginx on a free port in front of `ports`; yields its base URL."""
    prefix = tmp_path / "nginx"
    prefix.mkdir(exist_ok=True)
    listen = free_port()
    site = prefix / "c_app.conf"
    site.write_text(render_site(ports, listen), encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site), encoding="utf-8")
    command = [binary, "-t", "-p", str(prefix), "-c", str(conf)]
    check = subprocess.run(command, check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = (prefix / "stderr.log").open("wb")
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text(errors="replace")
            try:
                with httpx.Client() as probe:
                    probe.get(f"http://127.0.0.1:{listen}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{listen}"
    finally:
        process.terminate()  # nginx: fast shutdown on SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
