from collections.abc import Iterator

import pytest

from tests.harness import BACKENDS, Harness, harness


@pytest.fixture(scope="session", params=BACKENDS)
def h(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """A SagaQ engine + real worker on each backend: embedded, redis, rabbitmq."""
    with harness(request.param, tmp_path_factory.mktemp(request.param)) as running:
        yield running
