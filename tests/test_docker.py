"""Tests of docker/: the image's Dockerfile, its healthcheck, gunicorn's config, and compose.

No Docker engine is needed: the files are parsed and checked against the repository,
docker/gunicorn.conf.py is evaluated, and the HEALTHCHECK's exact command is run
against the real app on a local port. When a compose CLI new enough for the files is
installed, compose itself validates them too (skipped otherwise). docker/check_image.sh
(`make docker-check`) builds and runs the image for real; what it found is pinned here.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import runpy
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

yaml = pytest.importorskip("yaml")

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE = DOCKER_DIR / "docker-compose.yml"
COMPOSE_CPU = DOCKER_DIR / "docker-compose.cpu.yml"
GUNICORN_CONF = DOCKER_DIR / "gunicorn.conf.py"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
CHECK_SCRIPT = DOCKER_DIR / "check_image.sh"
GUNICORN_CMD = ["gunicorn", "-c", "docker/gunicorn.conf.py", "backend.app:create_app()"]
MODEL_DIR = "/data/models"


# --- helpers ----------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def instructions(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions(DOCKERFILE.read_text()) if kw == keyword]


def dockerfile_env() -> dict[str, str]:
    """The image's ENV defaults (KEY=value form)."""
    env = {}
    for args in instructions("ENV"):
        env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def copy_sources() -> list[str]:
    """The build-context paths that COPY instructions read (not those of other stages)."""
    sources = []
    for args in instructions("COPY"):
        parts = shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        sources += [p for p in parts if not p.startswith("--")][:-1]
    return sources


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command (the JSON array after CMD)."""
    (args,) = instructions("HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return json.loads(command)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    parts = Path(path.rstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) or fnmatch.fnmatchcase(c, glob.removeprefix("**/")) for c in candidates):
            ignored = not negate
    return ignored


class _ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads compose's ``!reset`` tag (as the string "!reset")."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Dockerfile -------------------------------------------------------------------


class TestDockerfile:
    def test_workdir_is_app(self):
        assert instructions("WORKDIR") == ["/app"]

    def test_runs_as_a_non_root_user(self):
        users = instructions("USER")
        assert users, "the image must switch to a non-root USER"
        assert users[-1].split(":")[0] not in ("root", "0")
        keywords = [kw for kw, _ in dockerfile_instructions(DOCKERFILE.read_text())]
        assert keywords.index("USER") < keywords.index("CMD")

    def test_cmd_is_gunicorn_with_the_repository_config(self):
        (cmd,) = instructions("CMD")
        assert json.loads(cmd) == GUNICORN_CMD
        assert "docker/gunicorn.conf.py" in copy_sources()

    def test_every_copied_path_exists(self):
        sources = copy_sources()
        assert {"backend/", "model/", "requirements.txt"} <= set(sources)
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path in the repository"

    def test_dockerignore_keeps_copied_paths_and_drops_the_rest(self):
        for source in copy_sources():
            assert not dockerignored(source), f"COPY {source} is excluded by .dockerignore"
        for path in (
            ".venv/bin/python",
            ".git/HEAD",
            "data/models/1/v0001/weights.pt",
            ".cache/wheels/x.whl",
            "backend/__pycache__/app.cpython-311.pyc",
            ".pytest_cache/v/x",
            "tests/test_docker.py",
            "bench/out/quick/runs.json",
            "docker/check_image.sh",
        ):
            assert dockerignored(path), f"{path} would be sent to the builder"

    def test_image_holds_every_project_module_the_app_imports(self):
        """backend/ and model/ may import each other only: nothing else of the repository is in the image."""
        copied = {Path(s.rstrip("/")).parts[0] for s in copy_sources()}
        local = {
            p.stem if p.suffix == ".py" else p.name
            for p in REPO_ROOT.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"
        }
        for package in ("backend", "model"):
            for file in (REPO_ROOT / package).rglob("*.py"):
                for node in ast.walk(ast.parse(file.read_text())):
                    names = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else (
                            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                        )
                    )
                    for name in names:
                        top = name.split(".")[0]
                        assert top not in local or top in copied, f"{file.name} imports {name}, not copied"

    def test_env_defaults_are_valid_settings(self):
        from backend.settings import ENVIRONMENT, Settings

        env = dockerfile_env()
        assert {k: env.get(k) for k in ("HOST", "PORT", "WORKERS", "THREADS", "MODEL_DIR")} == {
            "HOST": "0.0.0.0",
            "PORT": "9090",
            "WORKERS": "1",
            "THREADS": "64",
            "MODEL_DIR": MODEL_DIR,
        }
        settings = Settings.from_env({k: v for k, v in env.items() if k in ENVIRONMENT})
        assert (settings.host, settings.port, settings.model_dir) == ("0.0.0.0", 9090, MODEL_DIR)

    def test_model_dir_is_a_volume_and_the_port_is_exposed(self):
        volumes = [v for args in instructions("VOLUME") for v in json.loads(args)]
        assert volumes == [MODEL_DIR]
        assert instructions("EXPOSE") == [dockerfile_env()["PORT"]]

    def test_installs_the_pinned_requirements(self):
        runs = " ".join(instructions("RUN"))
        assert "pip install -r requirements.txt" in runs
        assert "torchvision" in runs, "the build should check that the pinned torch/torchvision are installed"

    def test_pip_trusts_a_ca_bundle_given_as_a_build_secret_and_only_then(self):
        """Behind a TLS-inspecting proxy pip needs that network's CA bundle (found by a real build).

        The secret is optional (a plain `docker build` works as before), mounted for the
        pip RUN only, and check_image.sh hands it in under the same id.
        """
        (run,) = [args for args in instructions("RUN") if "pip install" in args]
        assert run.startswith("--mount=type=secret,id=pip_cert ") and "required" not in run
        assert "if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi" in run
        assert '--secret "id=pip_cert,src=$cert"' in CHECK_SCRIPT.read_text()

    def test_needs_no_image_but_its_base(self):
        """No `# syntax=` frontend image (BuildKit's built-in one reads RUN --mount) and one FROM."""
        assert not re.match(r"\s*#\s*syntax\s*=", DOCKERFILE.read_text(), re.I)
        assert len(instructions("FROM")) == 1


class TestCheckScript:
    """docker/check_image.sh builds and runs the image: slow, so kept out of `make test` and CI."""

    def test_is_valid_bash_and_executable(self):
        assert os.access(CHECK_SCRIPT, os.X_OK)
        result = subprocess.run(["bash", "-n", str(CHECK_SCRIPT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    def test_has_its_own_make_target_outside_make_test(self):
        makefile = (REPO_ROOT / "Makefile").read_text()
        assert re.search(r"^docker-check:\n\tdocker/check_image\.sh$", makefile, re.M)
        (test_rule,) = re.findall(r"^test:(.*)$", makefile, re.M)
        assert "docker-check" not in test_rule
        assert "docker-check" not in (REPO_ROOT / ".ci" / "run").read_text()


# --- HEALTHCHECK, run against the real app ------------------------------------------


@pytest.fixture(scope="module")
def health_server(tmp_path_factory) -> Iterator[tuple[int, str, str]]:
    """The backend app with basic auth on, served by werkzeug on a free local port."""
    from werkzeug.serving import make_server

    from backend.app import create_app
    from backend.settings import Settings

    user, password = "health-user", "health-pass"
    settings = Settings(
        basic_auth_user=user, basic_auth_pass=password, model_dir=str(tmp_path_factory.mktemp("models"))
    )
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, user, password
    finally:
        server.shutdown()
        thread.join(timeout=10)


def run_healthcheck(port: int, **env: str) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, with this interpreter as the image's ``python``."""
    command = healthcheck_command()
    assert command[0] == "python"
    environ = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), **env}
    return subprocess.run([sys.executable, *command[1:]], env=environ, capture_output=True, timeout=60)


class TestHealthcheck:
    def test_uses_no_curl(self):
        (args,) = instructions("HEALTHCHECK")
        assert "curl" not in args and "wget" not in args

    def test_healthy_with_the_right_credentials(self, health_server):
        port, user, password = health_server
        result = run_healthcheck(port, BASIC_AUTH_USER=user, BASIC_AUTH_PASS=password)
        assert result.returncode == 0, result.stderr.decode()

    def test_unhealthy_with_a_wrong_password(self, health_server):
        port, user, _ = health_server
        assert run_healthcheck(port, BASIC_AUTH_USER=user, BASIC_AUTH_PASS="wrong").returncode != 0

    def test_unhealthy_without_credentials_when_auth_is_on(self, health_server):
        port, _, _ = health_server
        assert run_healthcheck(port).returncode != 0

    def test_unhealthy_when_nothing_listens(self):
        assert run_healthcheck(free_port(), BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p").returncode != 0


# --- gunicorn's config --------------------------------------------------------------


class TestGunicornConf:
    @pytest.fixture
    def conf(self, monkeypatch) -> dict:
        from backend.settings import ENVIRONMENT

        for name in ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)
        for name, value in {"HOST": "0.0.0.0", "PORT": "9191", "WORKERS": "2", "THREADS": "7"}.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(GUNICORN_CONF))

    def test_binds_and_sizes_from_the_environment(self, conf):
        assert conf["bind"] == "0.0.0.0:9191"
        assert (conf["workers"], conf["threads"]) == (2, 7)

    def test_timeout_outlasts_label_studios_predict_timeout(self, conf):
        assert conf["timeout"] > 100

    def test_every_setting_is_one_gunicorn_knows(self, conf):
        from gunicorn.config import Config

        config = Config()
        names = {k for k, v in conf.items() if not k.startswith("_") and not isinstance(v, ModuleType) and k.islower()}
        assert names <= set(config.settings), f"unknown gunicorn settings: {names - set(config.settings)}"
        for name in names:
            config.set(name, conf[name])  # gunicorn's own validators (a hook's arity too)

    def test_keeps_the_control_socket_where_home_is_writable(self, conf):
        assert "control_socket_disable" not in conf

    def test_no_control_socket_where_home_is_not_writable(self, monkeypatch, tmp_path):
        """`docker run --user UID` gives HOME=/: gunicorn logged an error at every start (found by a real run)."""
        (tmp_path / "file").touch()
        monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))  # under a file: not writable, even by root
        assert runpy.run_path(str(GUNICORN_CONF))["control_socket_disable"] is True

    def test_on_starting_makes_a_missing_model_dir(self, monkeypatch, tmp_path):
        monkeypatch.setenv("MODEL_DIR", str(tmp_path / "new" / "models"))
        runpy.run_path(str(GUNICORN_CONF))["on_starting"](None)
        assert (tmp_path / "new" / "models").is_dir()


def test_gunicorn_refuses_a_model_dir_it_cannot_write(tmp_path):
    """A host folder over /data/models that uid 10001 cannot write: /predict answered 500 while
    /health said UP (found by a real run). gunicorn must stop at once and say why."""
    from backend.settings import ENVIRONMENT

    (tmp_path / "file").touch()
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    env |= {"MODEL_DIR": str(tmp_path / "file" / "models"), "PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "backend.app:create_app()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"MODEL_DIR {tmp_path / 'file' / 'models'} is not writable by uid {os.getuid()}" in result.stderr


# --- docker-compose -----------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict:
    return load_compose(COMPOSE)["services"]


class TestCompose:
    def test_has_label_studio_and_the_backend(self, services):
        assert set(services) == {"label-studio", "ml-backend"}

    def test_label_studio_image_and_port(self, services):
        ls = services["label-studio"]
        repo, _, tag = ls["image"].partition(":")
        assert repo == "heartexlabs/label-studio" and tag.count(".") == 2 and tag.replace(".", "").isdigit()
        assert any(str(p).endswith(":8080") for p in ls["ports"])

    def test_label_studio_lets_the_backend_and_its_token_in(self, services):
        ls = services["label-studio"]
        env = ls["environment"]
        assert env["ML_BLOCK_LOCAL_IP"] == "false"
        assert env["SSRF_PROTECTION_ENABLED"] == "false"
        assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
        assert env["LOCAL_FILES_DOCUMENT_ROOT"]
        legacy = env.get("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN") == "true"
        assert legacy or "--enable-legacy-api-token" in str(ls.get("command", ""))
        for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
            assert env[name].startswith("${" + name + ":-"), f"{name} should come from .env with a default"

    def test_backend_builds_this_dockerfile(self, services):
        build = services["ml-backend"]["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO_ROOT
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE

    def test_backend_talks_to_label_studio(self, services):
        from backend.settings import ENVIRONMENT

        backend = services["ml-backend"]
        env = backend["environment"]
        assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
        assert env["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_USER_TOKEN")
        assert {"BASIC_AUTH_USER", "BASIC_AUTH_PASS"} <= set(env)
        assert set(env) <= set(ENVIRONMENT), f"not backend settings: {set(env) - set(ENVIRONMENT)}"
        assert any(str(p).endswith(":9090") for p in backend["ports"])

    def test_backend_reserves_one_nvidia_gpu(self, services):
        devices = services["ml-backend"]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]

    def test_model_dir_is_a_named_volume(self, services):
        mounts = [v.split(":") for v in services["ml-backend"]["volumes"]]
        assert any(source in load_compose(COMPOSE)["volumes"] and target == MODEL_DIR for source, target, *_ in mounts)

    def test_cpu_override_drops_the_reservation(self):
        backend = load_compose(COMPOSE_CPU)["services"]["ml-backend"]
        assert backend["deploy"]["resources"]["reservations"]["devices"] == "!reset"
        assert backend["environment"]["DEVICE"] == "cpu"


# docker-compose.cpu.yml's `!reset`. Debian's docker-compose 1.29 reads neither file (top-level
# `name`, then `!reset`): check_image.sh found it, and it is no CLI to validate them with.
COMPOSE_MIN_VERSION = (2, 24)


def _compose_cli() -> list[str] | None:
    """``docker compose`` or ``docker-compose``, 2.24 or newer (neither needs an engine for ``config``)."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cli[0]):
            continue
        result = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True)
        version = tuple(int(n) for n in re.findall(r"\d+", result.stdout)[:2])
        if result.returncode == 0 and version >= COMPOSE_MIN_VERSION:
            return cli
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="no docker compose CLI 2.24+ installed")
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_compose_validates_the_files(files, tmp_path):
    args = [arg for f in files for arg in ("-f", str(f))]
    result = subprocess.run([*_compose_cli(), *args, "config", "--quiet"], capture_output=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
