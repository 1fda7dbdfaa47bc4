"""The simulated broker runs canvas as Celery does: chain after success, chord body after
every header part (a duplicated part counts twice), errbacks of the failed task and of the
chord body it was a header part of."""

from __future__ import annotations

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from tests.simulation.canvas import leaves, on_failure, on_success


def task(app: Celery, name: str, errback: str | None = None) -> Signature:
    sig = Signature(name, kwargs={}, immutable=True, app=app)
    if errback:
        sig.on_error(Signature(errback, kwargs={}, immutable=True, app=app))
    return sig


def names(pairs: list[tuple[Signature, object]]) -> list[str]:
    return [str(sig["task"]) for sig, _ in pairs]


def test_a_chain_sends_the_next_task_after_success() -> None:
    app = Celery(set_as_current=False)
    first = leaves(chain(task(app, "a"), task(app, "b"), task(app, "c")), None)
    assert names(first) == ["a"]
    second = on_success(first[0][1])
    assert names(second) == ["b"]
    assert names(on_success(second[0][1])) == ["c"]


def test_a_chord_body_runs_once_every_part_succeeded_and_a_duplicate_counts_twice() -> None:
    app = Celery(set_as_current=False)
    parts = leaves(chord(group([task(app, "a"), task(app, "b")]), task(app, "join")), None)
    assert names(parts) == ["a", "b"]
    a_then = parts[0][1]
    assert on_success(a_then) == []
    assert names(on_success(a_then)) == ["join"]  # a delivered twice: the body starts early
    assert on_success(parts[1][1]) == []  # and not again


def test_a_failed_header_part_sends_its_errbacks_and_the_chord_bodys() -> None:
    app = Celery(set_as_current=False)
    canvas = chord(group([task(app, "a", "a-failed"), task(app, "b")]), task(app, "j", "j-err"))
    (a, a_then), _ = leaves(canvas, None)
    assert [str(e["task"]) for e in on_failure(a, a_then)] == ["a-failed", "j-err"]
