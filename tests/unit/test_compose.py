"""compose/docker-compose.yml can only be checked statically here (no Docker engine, no compose
plugin): every program it runs exists, every module it names is there, every sagaq container gets
the same SAGAQ_* settings, and the worker pools cover exactly the queues the example sagas use."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sagaq.cli import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
SETTINGS = {"SAGAQ_BROKER_URL", "SAGAQ_RESULT_BACKEND", "SAGAQ_STORE_URL", "SAGAQ_API_TOKEN"}
WORKERS = ("worker-default", "worker-inventory", "worker-payments")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(COMPOSE.read_text())
    return dict(data["services"])


def sagaq_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the sagaq image (everything but redis and postgres)."""
    return {name: s for name, s in services.items() if s.get("image") == "sagaq:local"}


@pytest.fixture
def workers_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("SAGAQ_STORE_URL", f"sqlite:///{tmp_path / 'workers.db'}")
    return importlib.import_module("workers.main")


def test_the_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    expected = {"redis", "postgres", "migrate", *WORKERS, "beat", "flower", "api"}

    assert expected <= set(services)
    assert set(sagaq_services(services)) == expected - {"redis", "postgres"}


def test_every_sagaq_service_gets_the_same_four_settings(
    services: dict[str, dict[str, Any]],
) -> None:
    environments = [s["environment"] for s in sagaq_services(services).values()]

    assert all(set(env) >= SETTINGS for env in environments)
    assert all(env == environments[0] for env in environments)
    assert environments[0]["SAGAQ_BROKER_URL"].startswith("redis://redis:")
    assert environments[0]["SAGAQ_STORE_URL"].startswith("postgresql://sagaq:")


def test_each_command_runs_a_program_that_is_installed(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in sagaq_services(services).items():
        program = service["command"][0]
        assert program in {"celery", "sagaq", "uvicorn"}, name
        beside_python = Path(sys.executable).parent / program
        assert beside_python.is_file() or shutil.which(program), f"{name}: no {program} installed"


def test_sagaq_commands_in_compose_are_real_cli_commands(
    services: dict[str, dict[str, Any]],
) -> None:
    commands = [s["command"] for s in sagaq_services(services).values()]
    sagaq_commands = [c[1:] for c in commands if c[0] == "sagaq"]

    assert sagaq_commands == [["db", "upgrade"]]
    for args in sagaq_commands:
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output


def test_the_modules_compose_names_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in sagaq_services(services).items():
        command = service["command"]
        if command[0] == "celery":
            module = command[command.index("-A") + 1]
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), name
        if command[0] == "uvicorn":
            module, _, attr = command[1].partition(":")
            assert attr == "app"
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), name


def test_worker_pools_serve_exactly_the_queues_of_the_example_sagas(
    services: dict[str, dict[str, Any]], workers_main: ModuleType
) -> None:
    served = set()
    for name in WORKERS:
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "workers.main", "worker"]
        served |= set(command[command.index("-Q") + 1].split(","))

    assert served == set(workers_main.engine.queues())


def test_worker_pools_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in WORKERS:
        assert "container_name" not in services[name]
        assert "ports" not in services[name]


def test_flower_watches_the_same_broker_on_5555(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]

    assert flower["command"] == ["celery", "-A", "workers.main", "flower", "--port=5555"]
    assert flower["environment"] == services["worker-default"]["environment"]
    assert any(str(p).endswith("5555:5555") for p in flower["ports"])


def test_everything_waits_for_healthy_services_and_the_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    assert "healthcheck" in services["redis"] and "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name, service in sagaq_services(services).items():
        if name == "migrate":
            continue
        depends = service["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == depends["postgres"] == {"condition": "service_healthy"}


def test_the_image_installs_the_project_with_what_it_packages(
    services: dict[str, dict[str, Any]],
) -> None:
    build = services["api"]["build"]
    dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
    text = dockerfile.read_text()

    copied = {
        source
        for line in text.splitlines()
        if line.startswith("COPY")
        for source in line.split()[1:-1]
    }

    assert dockerfile == ROOT / "compose" / "Dockerfile"
    assert "RUN pip install ." in text
    assert {"pyproject.toml", "README.md", "celeryconfig.py", "sagaq", "tasks", "workers"} <= copied


def test_compose_sets_the_redis_recovery_settings_that_celeryconfig_reads(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without them a dead worker's messages wait for kombu's defaults: a 1 h visibility
    # timeout, then a scan only every ~100 s.
    env = next(iter(sagaq_services(services).values()))["environment"]
    for name in ("SAGAQ_VISIBILITY_TIMEOUT", "SAGAQ_UNACKED_RESTORE_INTERVAL"):
        monkeypatch.setenv(name, env[name].split(":-")[1].rstrip("}"))
    sys.modules.pop("celeryconfig", None)
    config = importlib.import_module("celeryconfig")
    sys.modules.pop("celeryconfig", None)

    options = config.broker_transport_options
    assert options["visibility_timeout"] == 300
    assert options["unacked_restore_interval"] == 5
    assert options["unacked_restore_throttle"] == 1
