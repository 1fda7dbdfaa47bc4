"""Sagas on three worker hosts survive a network partition of one host and the death of another.

The hosts are network namespaces made by the test (hosts.py), each with one
`celery worker -P prefork -c 2` under its own host name; Redis (broker and result backend)
and PostgreSQL (store and ledger) are the test's own, listening on the root side of the links.
While chaos sagas (tests/chaos/saga.py, with `d` as the pivot) run on all three:

1. h1's link goes down while it runs a step, for PARTITION_FOR seconds (longer than the
   heartbeat lease, 3 x SAGAQ_HEARTBEAT), then comes back; its worker (the same PID) must
   take tasks again;
2. every process on h2 is killed, and h2 stays dead.

Then the chaos invariants: every saga is terminal and ended as its plan says, the ledger
(effects keyed by ctx.idempotency_key) nets out, compensations ran in reverse dependency
order, nothing was undone past a completed pivot, and every host did work (chaos_attempt
holds the host name of each step attempt; saga_event's `worker` too, once the store writes
it). Figures go to tests/artifacts/cluster.json and the end of the pytest output.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.chaos.pool import ROOT, Worker, WorkerPool
from tests.chaos.recovery import Fault, killed_under, summarize
from tests.chaos.run import STEPS, Chaos, Verdict, chaos_engine, make_plans, report, worker_env
from tests.cluster.hosts import (
    BoundRedis,
    Cluster,
    Host,
    OwnPostgres,
    netns_works,
    postgres_initdb,
)

pytestmark = pytest.mark.timeout(420)

HOSTS = 3
PIVOT = "d"
HEARTBEAT = 1  # SAGAQ_HEARTBEAT: the lease is 3 s
PARTITION_FOR = 8.0  # seconds h1 stays cut off: well past the heartbeat lease
STEP_SECONDS = 0.3  # chaos steps sleep up to this long, so faults land mid-step
SUBMIT_RATE = 3.0  # sagas per second
SURVIVE_WITHIN = 45.0
ARTIFACTS = ROOT / "tests" / "artifacts"


class Pools:
    """The worker pools of every host, seen as one by the chaos driver."""

    def __init__(self, pools: dict[str, WorkerPool]) -> None:
        self.by_host = pools
        self.kills: Counter[str] = Counter()

    @property
    def live(self) -> list[Worker]:
        return [w for pool in self.by_host.values() for w in pool.live]

    def crashed(self) -> list[str]:
        return [crash for pool in self.by_host.values() for crash in pool.crashed()]

    def received_since(self, worker: Worker, offset: int) -> bool:
        return next(iter(self.by_host.values())).received_since(worker, offset)

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process of the host's workers; nobody replaces them."""
        pool = self.by_host[host]
        victims = [pid for w in pool.live for pid in (w.pid, *w.children())]
        for worker in pool.live:
            worker.replaced = True  # killed on purpose: not a crash
        for pid in victims:
            os.kill(pid, 9)
        self.kills["host"] += 1
        return victims

    def stop(self) -> None:
        for pool in self.by_host.values():
            pool.stop()


def _saga_event_workers(store_url: str) -> dict[str, int]:
    """Hostnames in the store's history (saga_event.worker), once the store writes them."""
    engine = create_engine(store_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT worker, count(*) FROM saga_event WHERE worker IS NOT NULL "
                    "GROUP BY worker"
                )
            )
            return {str(w): int(n) for w, n in rows}
    except Exception:  # no saga_event table, or no worker column yet
        return {}
    finally:
        engine.dispose()


def _running_on(chaos: Chaos, host: str) -> list[tuple[str, str]]:
    """The steps `host` is running now."""
    running = chaos.ledger.running()
    return [step for (h, _), steps in running.items() if h == host for step in steps]


def test_sagas_survive_a_partitioned_host_and_a_dead_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if (reason := netns_works()) is not None:
        pytest.skip(f"multi-host test: {reason}")
    if postgres_initdb() is None or shutil.which("redis-server") is None:
        pytest.skip("multi-host test: PostgreSQL's initdb or redis-server is not installed")
    sagas = int(os.environ.get("SAGAQ_CLUSTER_SAGAS") or 60)
    seed = int(os.environ.get("SAGAQ_CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    pivot_at = STEPS.index(PIVOT)
    plans = make_plans(rng, sagas, failing=STEPS[: pivot_at + 1])
    queue = f"sagaq-cluster-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SAGAQ_HEARTBEAT", str(HEARTBEAT))
    clock = time.monotonic()
    cluster = Cluster(HOSTS)
    pools: Pools | None = None
    try:
        cluster.open()
        links = [h.root_addr for h in cluster.hosts]
        with BoundRedis(links) as redis, OwnPostgres(links) as pg:
            store_url = pg.url()
            with chaos_engine(redis.url(), redis.url(db=1), store_url, queue, PIVOT) as sagaq:
                engine, ledger = sagaq
                pools = Pools({h.name: _pool(h, redis, pg, queue) for h in cluster.hosts})
                for pool in pools.by_host.values():
                    pool.__enter__()
                chaos = Chaos(engine, ledger, pools, redis, rng)  # type: ignore[arg-type]
                chaos.note(f"{len(pools.live)} workers ready on {HOSTS} hosts (seed {seed})")
                ids = _run(chaos, pools, cluster.hosts, plans)
                chaos.settle()
                chaos.check_workers()
                pools.stop()
                figures = _verdict(chaos, plans, ids, store_url)
        figures["seconds"] = round(time.monotonic() - clock, 1)
        figures["seed"] = seed
    finally:
        if pools is not None:
            pools.stop()
        cluster.close()
    print("\n" + report("cluster", figures, chaos.timeline))
    problems = figures["problems"]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    assert (
        set(figures["hosts_that_ran_steps"]) == {h.name for h in cluster.hosts}
        or len(figures["hosts_that_ran_steps"]) == HOSTS
    ), figures["hosts_that_ran_steps"]
    assert figures["h1_worker_after_heal"], "h1's worker took no task after the partition"


def _pool(host: Host, redis: BoundRedis, pg: OwnPostgres, queue: str) -> WorkerPool:
    env = worker_env(redis.url(host.root_addr), redis.url(host.root_addr, db=1),
                     pg.url(host.root_addr), queue)  # fmt: skip
    env.update(
        SAGAQ_HEARTBEAT=str(HEARTBEAT),
        SAGAQ_CHAOS_PIVOT=PIVOT,
        SAGAQ_CHAOS_STEP_SECONDS=str(STEP_SECONDS),
    )
    logs = Path(ARTIFACTS / "cluster-workers" / host.name)
    return WorkerPool(env, queue, logs, size=1, concurrency=2, prefix=host.prefix(), host=host.name)


def _run(chaos: Chaos, pools: Pools, hosts: list[Host], plans: list[Any]) -> dict[int, str]:
    """Start the sagas at SUBMIT_RATE; partition h1 a quarter of the way in (while it runs a
    step) and heal it PARTITION_FOR seconds later; then kill h2 (while it runs a step)."""
    h1, h2 = hosts[0], hosts[1]
    window = len(plans) / SUBMIT_RATE
    queue, ids = list(plans), {}
    partition_at, heal_at, kill_at = 0.25 * window, float("inf"), float("inf")
    give_up = 10.0  # a fault waits up to this long for its host to run a step (not blocking)
    h1_worker: tuple[Worker, int] | None = None
    healed_clock, kill_deadline = 0.0, float("inf")
    chaos.figures["h1_worker_after_heal"] = 0
    next_sweep = 2.0
    while queue or heal_at < float("inf") or kill_at < float("inf") or h1_worker:
        now = time.monotonic() - chaos.started
        if now >= partition_at:
            lost = _running_on(chaos, h1.name)
            if not lost and now < 0.25 * window + give_up:
                partition_at = now + 0.05  # look again soon, starting sagas meanwhile
                continue
            h1_worker = next((w, w.log.stat().st_size) for w in pools.by_host[h1.name].live)
            h1.partition()
            chaos.faults.append(Fault("partition", time.time(), lost_steps=lost))
            chaos.note(f"partition {h1.name} ({len(lost)} running steps cut off)")
            partition_at, heal_at = float("inf"), now + PARTITION_FOR
        elif now >= heal_at:
            h1.heal()
            chaos.note(f"heal {h1.name}")
            heal_at, kill_at, healed_clock = float("inf"), max(now + 2.0, 0.6 * window), now
            kill_deadline = kill_at + give_up
            assert h1_worker is not None
            h1_worker = (h1_worker[0], h1_worker[0].log.stat().st_size)
        elif now >= kill_at:
            at = time.time()
            lost = _running_on(chaos, h2.name)
            if not lost and now < kill_deadline:
                kill_at = now + 0.05
                continue
            victims = pools.kill_host(h2.name)
            chaos.faults.append(Fault("host_killed", at, lost_steps=lost))
            chaos.note(f"kill host {h2.name}: pids {victims}, {len(lost)} running steps lost")
            kill_at = float("inf")
        elif h1_worker and healed_clock and pools.received_since(*h1_worker):
            worker = h1_worker[0]
            took = now - healed_clock
            chaos.figures["h1_worker_after_heal"] = 1
            chaos.note(
                f"{worker.name}@{h1.name} (pid {worker.pid}) took a task {took:.1f}s after heal"
            )
            h1_worker = None
        elif h1_worker and healed_clock and now - healed_clock > SURVIVE_WITHIN:
            chaos.problems.append(f"h1's worker took no task within {SURVIVE_WITHIN}s of heal")
            h1_worker = None
        elif queue and queue[0].n / SUBMIT_RATE <= now:
            plan = queue.pop(0)
            if (saga_id := chaos.start(plan)) is None:
                queue.insert(0, plan)
            else:
                ids[plan.n] = saga_id
        elif now >= next_sweep:
            chaos.check_workers()
            chaos.sweep()
            next_sweep = now + 2.0
        else:
            time.sleep(0.01)
    chaos.note(f"all {len(ids)} sagas started")
    return ids


def _verdict(chaos: Chaos, plans: list[Any], ids: dict[int, str], store_url: str) -> dict[str, Any]:
    ledger, store = chaos.ledger, chaos.engine.store
    verdict = Verdict()
    effects, flakes, undone_at = ledger.effects(), ledger.flakes(), ledger.undo_times()
    lost = killed_under(chaos.faults)
    missing = []
    for plan in plans:
        record = store.get(ids[plan.n])
        if record is None:
            missing.append(plan.n)
            continue
        verdict.check(
            record, plan, effects.get(record.id, {}), flakes, lost.get(record.id, set()),
            undone_at.get(record.id, {}), pivot=PIVOT,
        )  # fmt: skip
    v = verdict.figures
    return {
        "hosts": HOSTS,
        "sagas": len(plans),
        "completed": v["completed"],
        "compensated": v["compensated"],
        "failed": v["failed"],
        "unfinished": len(plans) - v["completed"] - v["compensated"] - v["failed"],
        "past_the_pivot": v["past_the_pivot"],
        "faults": [f"{f.kind} ({len(f.lost_steps)} running steps)" for f in chaos.faults],
        "recovery": summarize(chaos.faults, store),
        "hosts_that_ran_steps": ledger.hosts(),
        "saga_event_workers": _saga_event_workers(store_url),
        "h1_worker_after_heal": chaos.figures["h1_worker_after_heal"],
        "redelivered_attempts": v["redelivered_attempts"],
        "compensated_after_worker_lost": v["compensated_after_worker_lost"],
        "duplicates_absorbed": ledger.events("duplicate"),
        "late_effects_refused": ledger.events("tombstoned"),
        "sweeper": dict(chaos.sweeper),
        "lease_fast_forwards": chaos.figures["lease_fast_forwards"],
        "invariants_checked": [
            "every saga terminal and as planned",
            "ledger nets out per saga (effects keyed by ctx.idempotency_key)",
            "compensations in reverse dependency order",
            f"nothing undone past the completed pivot {PIVOT!r}",
            "every host ran steps",
            "no worker died unless killed; h1's worker consumes after the heal",
        ],
        "problems": [*chaos.problems, *verdict.problems, *(f"saga {n} lost" for n in missing)],
    }
