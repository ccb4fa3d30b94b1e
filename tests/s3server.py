"""A real S3 server for the cloud-storage tests and benchmark: moto's standalone server
(``moto[server]`` from the package index) on a free 127.0.0.1 port, in a process group
of its own, with its request log in a file (one line per request: the download count)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labelstudio import _child_env, _popen_logged, free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "e2e-images"
REGION = "us-east-1"
SERVER_START_S = 60.0
# moto's default account accepts any key unless it checks IAM (``no_auth_actions``)
DEFAULT_KEYS = {"aws_access_key_id": "AKIAE2EEXAMPLE000000", "aws_secret_access_key": "e2e-secret"}


@dataclass
class S3Server:
    """moto's standalone server, a process group of its own; its log has one line per request."""

    url: str
    log_path: Path
    process: subprocess.Popen

    def client(self, service: str = "s3", **keys):
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **(keys or DEFAULT_KEYS))

    def object_gets(self, bucket: str) -> int:
        """Successful GETs of objects of ``bucket`` (listings excluded): the image downloads."""
        pattern = re.compile(rf'"GET /{re.escape(bucket)}/[^ ?]+[^ ]* HTTP/1\.1"? (200|206) ')
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if pattern.search(line))

    def stop(self) -> None:
        stop_process(self.process, grace_s=5.0)


def start_s3_server(base: Path, *, no_auth_actions: int | None = None) -> S3Server:
    """Start moto_server on a free loopback port; ``no_auth_actions`` turns on its IAM checks
    after that many unauthenticated calls (moto's INITIAL_NO_AUTH_ACTION_COUNT)."""
    import requests

    port = free_port()
    exe = REPO_ROOT / ".venv" / "bin" / "moto_server"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    env = _child_env()
    if no_auth_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(no_auth_actions)
    log_path = base / f"moto-{port}.log"
    proc = _popen_logged([*cmd, "-H", "127.0.0.1", "-p", str(port)], cwd=base, env=env, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/moto-api/", timeout=2).status_code == 200:
                return S3Server(url, log_path, proc)
        except requests.RequestException:
            time.sleep(0.3)
    stop_process(proc)
    raise RuntimeError(f"moto_server did not answer on {url}:\n{log_path.read_text(errors='replace')[-3000:]}")
