"""sagaq as a user gets it: a wheel built from this repository, installed (not editable) into
a fresh virtualenv, used from a project outside the repository.

- the wheel holds the `sagaq` package and nothing else (no `tasks`, `workers`, `celeryconfig`);
- the README's first example runs as written;
- a shop project with its own `tasks.py` and a plain `Celery("shop", broker=..., backend=...)`
  runs a saga with a join on `celery -A shop worker`: one order COMPLETED, one COMPENSATED;
- the shop's own tests use sagaq's pytest plugin, with pytest-celery's plugin enabled too.

To keep it quick the fresh virtualenv gets sagaq's dependencies from this repository's
virtualenv (a path entry, so the editable sagaq installed there stays invisible) and the wheel
with --no-deps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PG_URL, REDIS_URL, pg_schema_url, require

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources, so the work tree gets no build/ directory."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "sagaq", source / "sagaq", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: setuptools comes from the dev extras, nothing is downloaded.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*pip_wheel, "-w", str(out), str(source)])
    (built,) = out.glob("sagaq-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed; returns its python."""
    home = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(home)])
    python = home / "bin" / "python"
    site = Path(run([str(python), "-c", "import site; print(site.getsitepackages()[0])"]).strip())
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "repo_venv_dependencies.pth").write_text(f"{deps}\n")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    run([*pip, "--target", str(site), str(wheel)])
    # Console scripts: pip --target writes them under site/bin.
    for script in (site / "bin").glob("*"):
        shutil.move(str(script), home / "bin" / script.name)
    return python


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """No SAGAQ_* and no PYTHONPATH from the test run: the project stands alone."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAQ_", "PYTHON"))}
    return {**keep, **extra}


def test_the_wheel_holds_only_the_sagaq_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()

    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"sagaq"}
    assert "sagaq/py.typed" in names and "sagaq/demo.py" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert b"[pytest11]\nsagaq = sagaq.testing" in entry_points


def test_the_installed_package_is_the_wheel_and_has_no_repository_modules(
    venv: Path, tmp_path: Path
) -> None:
    probe = textwrap.dedent(
        """
        import importlib.util, json, sagaq
        print(json.dumps({
            "sagaq": sagaq.__file__,
            "others": [m for m in ("tasks", "workers", "celeryconfig")
                       if importlib.util.find_spec(m)],
        }))
        """
    )
    found = json.loads(run([str(venv), "-c", probe], cwd=tmp_path, env=clean_env()))

    assert found["sagaq"].startswith(str(venv.parent.parent))
    assert found["others"] == []


def test_sagaq_demo_runs_from_the_installed_package(venv: Path, tmp_path: Path) -> None:
    out = run([str(venv.parent / "sagaq"), "demo"], cwd=tmp_path, env=clean_env(COLUMNS="200"))

    ids = re.findall(r"saga ([0-9a-f-]{36}) (COMPLETED|COMPENSATED)", out)
    assert [status for _, status in ids] == ["COMPLETED", "COMPENSATED"], out


def readme_first_example() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_first_example_runs_as_written(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(readme_first_example())

    done = subprocess.run(
        [str(venv), "example.py"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "COMPLETED ()",
        "COMPENSATED charge ('reserve',)",
    ], done.stdout
    # Celery logs the declined charge with its traceback; nothing else may be printed at exit
    # (Celery 5.7 + redis-py 8 printed AsyncResult.__del__ tracebacks there).
    assert "Exception ignored" not in done.stderr, done.stderr


SHOP_TASKS = '''
"""The shop's own tasks module: a checkout saga with a join."""
from pydantic import BaseModel
from sagaq import NonRetryableError, Saga, StepContext

UNDONE_LOG = "undone.log"


class Order(BaseModel):
    order_id: str
    fail_at: str | None = None


checkout = Saga("checkout", input=Order)


def act(ctx: StepContext) -> dict:
    if ctx.input.fail_at == ctx.step:
        raise NonRetryableError(f"{ctx.step} failed")
    return {"done": ctx.step}


def undo(ctx: StepContext, result: dict) -> None:
    with open(UNDONE_LOG, "a") as log:
        log.write(f"{ctx.saga_id} {ctx.step}\\n")


reserve = checkout.step(name="reserve")(act)
reserve.compensate(undo)
charge = checkout.step(name="charge", depends_on=[reserve])(act)
charge.compensate(undo)
pack = checkout.step(name="pack", depends_on=[reserve])(act)
pack.compensate(undo)
checkout.step(name="ship", depends_on=[charge, pack])(act)
'''

SHOP_APP = '''
"""The shop's Celery app: plain, no celeryconfig."""
import os

from celery import Celery
from sagaq import SagaQ

from tasks import checkout

app = Celery("shop", broker=os.environ["SHOP_REDIS"], backend=os.environ["SHOP_REDIS"])
# Other test runs share this Redis: a queue of our own (a plain worker consumes it).
app.conf.task_default_queue = os.environ["SHOP_QUEUE"]
engine = SagaQ(app, store=os.environ["SHOP_STORE"])
engine.register(checkout)
'''

SHOP_CLIENT = '''
"""A short-lived process that starts two orders and reports how they ended."""
import json

from shop import engine

ok = engine.start("checkout", {"order_id": "o-1"}).wait(timeout=60)
bad = engine.start("checkout", {"order_id": "o-2", "fail_at": "ship"}).wait(timeout=60)
print(json.dumps([
    {"id": r.id, "status": r.status.value, "failed_step": r.failed_step,
     "compensated": sorted(r.compensated_steps)}
    for r in (ok, bad)
]))
'''

SHOP_TESTS = '''
"""The shop's own tests, with sagaq's pytest plugin (no services)."""
import pytest

from tasks import checkout


@pytest.fixture
def sagaq_sagas():
    return [checkout]


def test_an_order_completes(sagaq_engine):
    result = sagaq_engine.start("checkout", {"order_id": "t-1"}).wait(timeout=30)
    assert result.status == "COMPLETED"


def test_checkout_compensates_correctly(sagaq_verify):
    report = sagaq_verify(checkout, {"order_id": "t-2"})
    assert report.ok
'''


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    project = tmp_path / "shop"
    project.mkdir()
    for name, text in (
        ("tasks.py", SHOP_TASKS),
        ("shop.py", SHOP_APP),
        ("client.py", SHOP_CLIENT),
        ("test_shop.py", SHOP_TESTS),
    ):
        (project / name).write_text(text)
    return project


@pytest.fixture
def store_url() -> Iterator[str]:
    require(REDIS_URL, PG_URL)
    with pg_schema_url() as url:
        yield url


def test_a_plain_celery_project_runs_a_saga_with_a_join_on_celery_worker(
    venv: Path, shop: Path, store_url: str
) -> None:
    env = clean_env(
        SHOP_REDIS=REDIS_URL, SHOP_STORE=store_url, SHOP_QUEUE=f"shop-{uuid.uuid4().hex[:8]}"
    )
    worker_log = (shop / "worker.log").open("w")
    worker = subprocess.Popen(
        # `celery -A shop worker`, through the venv's python (celery's own script lives in
        # the repository's virtualenv, whose python would import the editable sagaq).
        [str(venv), "-m", "celery", "-A", "shop", "worker", "-c", "2", "--loglevel", "INFO"],
        cwd=shop,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = subprocess.run(
            [str(venv), "client.py"],
            cwd=shop,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # the worker's own group (start_new_session)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        worker_log.close()
    log = (shop / "worker.log").read_text()

    assert client.returncode == 0, f"{client.stderr}\n--- worker log ---\n{log}"
    ok, bad = json.loads(client.stdout)
    assert (ok["status"], ok["compensated"]) == ("COMPLETED", [])
    assert bad["status"] == "COMPENSATED" and bad["failed_step"] == "ship"
    assert bad["compensated"] == ["charge", "pack", "reserve"]
    undone = (shop / "undone.log").read_text().split("\n")
    assert sorted(line.split()[1] for line in undone if line.startswith(bad["id"])) == [
        "charge",
        "pack",
        "reserve",
    ]
    assert client.stderr == "", client.stderr  # a short-lived client exits quietly
    assert "does not consume queue" not in log


def test_the_shop_tests_its_saga_with_the_pytest_plugin_next_to_pytest_celery(
    venv: Path, shop: Path
) -> None:
    done = subprocess.run(
        [str(venv), "-m", "pytest", "-q", "-p", "celery", "test_shop.py", "-o", "addopts="],
        cwd=shop,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
