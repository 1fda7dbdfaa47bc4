"""Nothing is lost when workers die, messages go missing and the broker restarts.

Chaos sagas (tests/chaos/saga.py; 120 per broker by default, SAGAQ_CHAOS_SAGAS for more) run
on two real `celery worker -P prefork -c 2` processes while the test SIGKILLs prefork
children, worker main processes and whole workers (replacing those), restarts the broker once
(trying to start a saga while it is down) and sweeps. The brokers are the suite's own
(tests/chaos/services.py): a redis-server and a RabbitMQ node on free ports; the machine's
services are never stopped. Then:

- every saga is checked against its plan and against the PostgreSQL ledger of effects;
- the workers that were running when the broker went down are the same processes (PIDs)
  afterwards, and each of them took new tasks (nobody restarts a worker that died by itself;
  one that did is a failure);
- the time to recover from each kind of fault is reported (tests/chaos/recovery.py).

Figures go to tests/artifacts/chaos-<broker>.json and the end of the pytest output; worker
logs to tests/artifacts/chaos-<broker>-workers/.

Timing: Redis gets a 10 s visibility timeout, and the workers look for the messages of dead
workers every second (worker_app.py), so those come back within ~10 s. The chaos steps have no
timeout; workers heartbeat every SAGAQ_HEARTBEAT (2 s here), so once the store sweeps on
heartbeats a step whose worker died is recovered within ~6 s. Until it does, a step left
RUNNING by a dead worker whose message is gone too (a kill shortly before the Redis restart,
which wipes unacked messages) waits for the default lease; rather than wait that long, once
nothing has finished for QUIET seconds the test runs one sweep with its clock moved past the
lease (counted as `lease_fast_forwards`, expected 0 with heartbeats).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

import pytest

from tests.chaos.pool import WorkerPool
from tests.chaos.recovery import killed_under, summarize
from tests.chaos.run import (
    ARTIFACTS,
    HEARTBEAT,
    Broker,
    Chaos,
    Verdict,
    chaos_engine,
    make_plans,
    report,
    worker_env,
)
from tests.chaos.saga import ChaosPlan, Ledger
from tests.chaos.services import OwnRedis
from tests.harness import PG_URL, pg_schema_url, require

pytestmark = pytest.mark.chaos


def _figures(
    broker: str, plans: list[ChaosPlan], chaos: Chaos, verdict: Verdict, ledger: Ledger
) -> dict[str, Any]:
    v, c = verdict.figures, chaos.figures
    return {
        "broker": broker,
        "sagas": len(plans),
        "completed": v["completed"],
        "compensated": v["compensated"],
        "failed": v["failed"],
        "unfinished": len(plans) - v["completed"] - v["compensated"] - v["failed"],
        "planned_permanent_failures": sum(p.fail is not None for p in plans),
        "transient_failures_injected": len(ledger.flakes()),
        "kills": sum(chaos.pool.kills.values()),
        "kills_by_kind": dict(chaos.pool.kills),
        "worker_crashes": sum("worker died" in p for p in chaos.problems),
        "broker_restarts": c["broker_restarts"],
        "workers_outliving_the_restart": chaos.survival,
        "recovery": summarize(chaos.faults, chaos.engine.store),
        "starts_refused": c["starts_refused"],
        "step_attempts": v["step_attempts"],
        "steps_run": v["steps_run"],
        "redelivered_attempts": v["redelivered_attempts"],  # attempts no injected failure explains
        "compensation_attempts": v["compensation_attempts"],
        "duplicates_absorbed": ledger.events("duplicate"),
        "late_effects_refused": ledger.events("tombstoned"),
        "undone_without_effect": v["undone_without_effect"],
        "budget_spent_by_redeliveries": v["budget_spent_by_redeliveries"],
        "compensated_after_worker_lost": v["compensated_after_worker_lost"],
        "sweeper": dict(chaos.sweeper),
        "lease_fast_forwards": c["lease_fast_forwards"],
        "problems": [*chaos.problems, *verdict.problems][:50],
    }


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_no_saga_is_lost_when_workers_die_and_the_broker_restarts(
    broker: str,
    chaos_sagas: int,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require(PG_URL)
    control: Broker = request.getfixturevalue(f"own_{broker}")
    # On Redis the broker is also the result backend, so its restart loses chord counters too.
    backend = control if isinstance(control, OwnRedis) else request.getfixturevalue("own_redis")
    monkeypatch.setenv("SAGAQ_HEARTBEAT", str(HEARTBEAT))  # the test's sweeps read it too
    seed = int(os.environ.get("SAGAQ_CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    plans = make_plans(rng, chaos_sagas)
    queue = f"sagaq-chaos-{broker}-{uuid.uuid4().hex[:8]}"
    clock = time.monotonic()
    with (
        pg_schema_url() as store_url,
        chaos_engine(control.url, backend.url, store_url, queue) as sagaq,
    ):
        engine, ledger = sagaq
        env = worker_env(control.url, backend.url, store_url, queue)
        with WorkerPool(env, queue, ARTIFACTS / f"chaos-{broker}-workers") as pool:
            chaos = Chaos(engine, ledger, pool, control, rng)
            chaos.note(f"{len(pool.live)} workers ready (seed {seed})")
            ids = chaos.run(plans, kills=max(6, chaos_sagas // 20))
            chaos.settle()
            chaos.check_workers()
            pool.stop()

        verdict = Verdict()
        effects, flakes, undone_at = ledger.effects(), ledger.flakes(), ledger.undo_times()
        lost = killed_under(chaos.faults)
        for plan in plans:
            record = engine.store.get(ids[plan.n])
            assert record is not None, f"saga {plan.n} is lost: not in the store"
            verdict.check(
                record,
                plan,
                effects.get(record.id, {}),
                flakes,
                lost.get(record.id, set()),
                undone_at.get(record.id, {}),
            )
        figures = {
            **_figures(broker, plans, chaos, verdict, ledger),
            "seed": seed,
            "seconds": round(time.monotonic() - clock, 1),
        }
    print("\n" + report(f"chaos-{broker}", figures, chaos.timeline))
    problems = [*chaos.problems, *verdict.problems]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    assert figures["kills"] >= 3 and figures["broker_restarts"] == 1
    survivors = figures["workers_outliving_the_restart"]
    assert survivors, "no worker was running when the broker restarted"
