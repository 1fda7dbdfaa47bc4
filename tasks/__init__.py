"""Example business sagas used by the demo, the docs, the tests and the benchmarks."""

from tasks.orders import order_saga
from tasks.travel import travel_saga

EXAMPLE_SAGAS = (order_saga, travel_saga)

__all__ = ["EXAMPLE_SAGAS", "order_saga", "travel_saga"]
