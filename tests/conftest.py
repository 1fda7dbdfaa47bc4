from collections.abc import Iterator

import pytest

from tests.harness import BACKENDS, Harness, harness


# Module scope: only one in-process Celery worker can run in a process at a time, and some
# modules start workers of their own; a worker from `h` must be gone before they do.
@pytest.fixture(scope="module", params=BACKENDS)
def h(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """A SagaQ engine + real worker on each backend: embedded, redis, rabbitmq."""
    with harness(request.param, tmp_path_factory.mktemp(request.param)) as running:
        yield running
