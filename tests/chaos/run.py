"""The chaos run shared by tests/chaos and tests/cluster: plans, the driver that starts sagas
while faults hit (Chaos), and the verdict on every saga (Verdict)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Celery

from sagaq import BrokerUnavailableError, SagaQ, SagaStatus, StepStatus
from sagaq.runtime import sweep
from sagaq.store import SagaRecord
from sagaq.store.compensation import LOST_ERROR
from tests.chaos.pool import KILL_KINDS, ROOT, Worker, WorkerPool
from tests.chaos.recovery import Fault
from tests.chaos.report import record_summary
from tests.chaos.saga import DEPENDS, RETRY, SAGA, STEPS, ChaosPlan, Ledger, build_chaos_saga
from tests.chaos.services import OwnRabbitMQ, OwnRedis

ARTIFACTS = ROOT / "tests" / "artifacts"
VISIBILITY_TIMEOUT = 10  # Redis: unacked messages of a dead worker are delivered again after this
HEARTBEAT = 2  # SAGAQ_HEARTBEAT of the workers and of the sweeping test
STALL_AFTER = 8.0  # the sweeper re-publishes work of sagas idle for this long
SWEEP_EVERY = 2.0
SUBMIT_RATE = 6.0  # sagas started per second while the chaos goes on
BROKER_DOWN = 2.0  # seconds the broker stays down on its restart
SURVIVE_WITHIN = 45.0  # after a broker restart, every worker takes a task again within this
QUIET = VISIBILITY_TIMEOUT + STALL_AFTER + 10  # nothing finished for this long: fast-forward
SETTLE = 180.0  # after the last start, every saga must be finished within this

Broker = OwnRedis | OwnRabbitMQ


def make_plans(rng: random.Random, count: int, failing: tuple[str, ...] = STEPS) -> list[ChaosPlan]:
    """~30% fail for good at a random step of `failing` (a third of those with a compensation
    that fails once), ~35% have a step that fails once and succeeds when retried."""
    plans = []
    for n in range(count):
        fail = rng.choice(failing) if rng.random() < 0.3 else None
        flaky = rng.choice(sorted(RETRY)) if rng.random() < 0.35 else None
        undone = STEPS[: STEPS.index(fail)] if fail else ()
        flaky_undo = rng.choice(undone) if undone and rng.random() < 0.35 else None
        plans.append(
            ChaosPlan(n=n, fail=fail, flaky=None if flaky == fail else flaky, flaky_undo=flaky_undo)
        )
    return plans


@dataclass
class Chaos:
    """One run: starts sagas, kills workers, restarts the broker, sweeps, then waits."""

    engine: SagaQ
    ledger: Ledger
    pool: WorkerPool
    broker: Broker
    rng: random.Random
    figures: Counter[str] = field(default_factory=Counter)
    sweeper: Counter[str] = field(default_factory=Counter)
    timeline: list[str] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    survival: list[dict[str, Any]] = field(default_factory=list)  # per worker, per restart
    started: float = field(default_factory=time.monotonic)
    # Workers that were running when the broker went down, with their log size then, that
    # have not taken a task since it came back.
    _waiting: dict[str, tuple[Worker, int]] = field(default_factory=dict)
    _back_at: float = 0.0

    def note(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.started:7.2f}s {what}")

    def start(self, plan: ChaosPlan) -> str | None:
        try:
            handle = self.engine.start(SAGA, plan.model_dump(), idempotency_key=f"n{plan.n}")
        except BrokerUnavailableError as exc:  # refused cleanly: started again later
            self.figures["starts_refused"] += 1
            self.note(f"start of saga {plan.n} refused: {str(exc)[:80]}")
            return None
        return handle.id

    def sweep(self, *, fast_forward: float = 0.0) -> None:
        report = sweep(self.engine.runtime, stall_after=STALL_AFTER, now=time.time() + fast_forward)
        self.sweeper["passes"] += 1
        self.sweeper.update({k: v for k, v in asdict(report).items() if k != "examined"})

    def check_workers(self) -> None:
        """No worker dies by itself; after a broker restart each one takes tasks again."""
        for crash in self.pool.crashed():
            if crash not in self.problems:
                self.problems.append(f"worker died without being killed: {crash}")
                self.note(f"CRASH {crash}")
        for name, (worker, offset) in list(self._waiting.items()):
            waited = time.monotonic() - self._back_at
            if self.pool.received_since(worker, offset):
                self.survival.append({"worker": name, "pid": worker.pid, "took_a_task_after_s":
                                      round(waited, 2)})  # fmt: skip
                self.note(f"{name} (pid {worker.pid}) took a task {waited:.1f}s after restart")
                del self._waiting[name]
            elif not worker.alive() or waited > SURVIVE_WITHIN:
                state = "died" if not worker.alive() else f"took no task in {SURVIVE_WITHIN:g}s"
                self.problems.append(f"{name} (pid {worker.pid}) {state} after the restart")
                del self._waiting[name]

    def kill(self, kind: str) -> None:
        """Kill (preferably) a process that is running a step, so the fault costs work and
        its recovery can be timed; wait up to 3 s for one to be busy."""
        pids = {pid for w in self.pool.live for pid in (w.pid, *w.children())}
        deadline = time.monotonic() + 3.0
        while True:
            at = time.time()
            running = self.ledger.running()
            if {pid for _, pid in running} & pids or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        victims, affected = self.pool.kill(kind, self.rng, busy={pid for _, pid in running})
        lost = [step for (_, pid), steps in running.items() if pid in affected for step in steps]
        self.faults.append(Fault(kind, at, lost_steps=lost))
        self.note(f"kill {kind}: pids {victims}, {len(lost)} running steps lost")

    def restart_broker(self, while_down: Callable[[], None] | None) -> None:
        """Stop the broker, keep it down BROKER_DOWN seconds (calling `while_down`), start it
        again; then expect every worker that was running to take tasks again."""
        survivors = {w.name: (w, w.log.stat().st_size) for w in self.pool.live}
        fault = Fault("broker_restart", time.time())
        self.note(f"{self.broker.name} down; workers {[w.pid for w, _ in survivors.values()]}")
        try:
            self.broker.stop()
            began = time.monotonic()
            if while_down is not None:
                while_down()
            time.sleep(max(0.0, BROKER_DOWN - (time.monotonic() - began)))
        finally:
            self.broker.start()  # returns once it answers
        fault.back_at = time.time()
        # Affected: the sagas the broker outage left unfinished (others ended meanwhile).
        fault.sagas = [r.id for r in self.unfinished()]
        self.faults.append(fault)
        self.figures["broker_restarts"] += 1
        self._waiting, self._back_at = survivors, time.monotonic()
        self.note(f"{self.broker.name} up")

    def run(self, plans: list[ChaosPlan], kills: int) -> dict[int, str]:
        """Start the sagas at SUBMIT_RATE while killing workers `kills` times and restarting the
        broker once (trying to start a saga while it is down), sweeping all along. No worker
        is killed while the survivors of the restart have not yet taken a task.
        Returns plan number -> saga id."""
        window = len(plans) / SUBMIT_RATE
        kinds = [KILL_KINDS[i % len(KILL_KINDS)] for i in range(kills)]
        self.rng.shuffle(kinds)
        chaos = sorted(
            [(self.rng.uniform(0.05, 0.95) * window, kind) for kind in kinds]
            + [(self.rng.uniform(0.3, 0.7) * window, "restart")]
        )
        queue = list(plans)
        ids: dict[int, str] = {}

        def start_next() -> None:
            plan = queue.pop(0)
            if (saga_id := self.start(plan)) is None:
                queue.insert(0, plan)
            else:
                ids[plan.n] = saga_id

        next_sweep = SWEEP_EVERY
        while queue or chaos or self._waiting:
            now = time.monotonic() - self.started
            if chaos and chaos[0][0] <= now and not self._waiting:
                _, kind = chaos.pop(0)
                if kind == "restart":
                    self.restart_broker(while_down=start_next if queue else None)
                else:
                    self.kill(kind)
                # Spread what the restart delayed: at least a second between two blows.
                later = time.monotonic() - self.started + 1.0
                chaos = [(max(t, later + i), k) for i, (t, k) in enumerate(chaos)]
            elif queue and queue[0].n / SUBMIT_RATE <= now:
                start_next()
            elif now >= next_sweep:
                self.check_workers()
                self.sweep()
                next_sweep = now + SWEEP_EVERY
            else:
                if self._waiting:
                    self.check_workers()
                time.sleep(0.01)
        self.note(f"all {len(ids)} sagas started")
        return ids

    def unfinished(self) -> list[SagaRecord]:
        return self.engine.store.unfinished(created_before=time.time() + 1, limit=100_000)

    def settle(self) -> None:
        """Sweep until every saga is finished (or SETTLE passes). A step left RUNNING by a dead
        worker whose message is gone waits for its lease: once nothing has finished for QUIET
        seconds, one sweep runs as if the lease had passed."""
        lease = self.engine.runtime.lease
        deadline = time.monotonic() + SETTLE
        last, moved = len(self.unfinished()), time.monotonic()
        while last and time.monotonic() < deadline:
            time.sleep(SWEEP_EVERY)
            self.check_workers()
            if time.monotonic() - moved > QUIET:
                for record in self.unfinished()[:5]:
                    self.note(f"idle: {record.id} {record.status} {_statuses(record)}")
                self.note(f"{last} sagas idle for {QUIET}s: sweeping as if {lease:g}s later")
                self.sweep(fast_forward=lease)
                self.figures["lease_fast_forwards"] += 1
                moved = time.monotonic()
            else:
                self.sweep()
            if (left := len(self.unfinished())) != last:
                last, moved = left, time.monotonic()
        self.note(f"settled: {last} unfinished")


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    figures: Counter[str] = field(default_factory=Counter)

    def check(
        self,
        record: SagaRecord,
        plan: ChaosPlan,
        effects: dict[str, int],
        flakes: set[str],
        killed_under: set[str],
        undone_at: dict[str, float],
        pivot: str | None = None,
    ) -> None:
        """The saga ended as its plan says, and the ledger shows exactly its effects.
        `killed_under`: its steps whose process was killed while running them; `undone_at`:
        when each step's compensation ran (the ledger's clock)."""
        sid, status = record.id, record.status
        self.figures[status.value.lower()] += 1
        attempts = {s.name: s.attempts for s in record.steps}
        self.figures["step_attempts"] += sum(attempts.values())
        self.figures["steps_run"] += sum(1 for n in attempts.values() if n)
        for name, n in attempts.items():
            # Attempts beyond the first that no injected failure explains: redeliveries.
            self.figures["redelivered_attempts"] += max(0, n - 1 - (f"{sid}:{name}" in flakes))
        self.figures["compensation_attempts"] += sum(s.compensation_attempts for s in record.steps)
        done = {k.rsplit(":", 1)[1] for k, d in effects.items() if d == 1}
        undo_rows = [k for k in effects if k.endswith(":undo")]
        self.figures["undone_without_effect"] += sum(effects[k] == 0 for k in undo_rows)
        # A step whose retry budget went to redeliveries fails for good: legitimate, if rare.
        spent = record.failed_step not in (None, plan.fail) and attempts[
            record.failed_step
        ] > 1 + RETRY.get(record.failed_step, 0)
        self.figures["budget_spent_by_redeliveries"] += spent
        # A step whose worker died under it may have applied: sagaq compensates it (DESIGN).
        lost = record.failed_step in killed_under and LOST_ERROR in (record.error or "")
        self.figures["compensated_after_worker_lost"] += lost and plan.fail is None
        spent = spent or lost
        what = f"saga {plan.n} ({sid}, fail={plan.fail}, flaky={plan.flaky})"
        # Compensations ran in reverse dependency order; nothing undone past a completed pivot.
        self.problems += [f"{what}: {p}" for p in _order_broken(undone_at)]
        if pivot is not None and any(
            s.name == pivot and s.status == StepStatus.COMPLETED for s in record.steps
        ):
            self.figures["past_the_pivot"] += 1
            if undone_at:
                self.problems.append(f"{what}: undone past the completed pivot: {undone_at}")
        if status == SagaStatus.COMPLETED:
            if plan.fail is not None:
                self.problems.append(f"{what}: COMPLETED despite a permanent failure")
            if any(s.status != StepStatus.COMPLETED for s in record.steps):
                self.problems.append(f"{what}: COMPLETED with steps {_statuses(record)}")
            if done != set(STEPS) or undo_rows or sum(effects.values()) != len(STEPS):
                self.problems.append(f"{what}: COMPLETED but the ledger says {effects}")
        elif status == SagaStatus.COMPENSATED:
            if plan.fail is None and not spent:
                self.problems.append(
                    f"{what}: COMPENSATED without a permanent failure: {record.error}"
                )
            if plan.fail is not None and record.failed_step != plan.fail and not spent:
                self.problems.append(f"{what}: failed at {record.failed_step}: {record.error}")
            if sum(effects.values()) != 0:
                self.problems.append(
                    f"{what}: COMPENSATED but the ledger does not net to zero: {effects} "
                    f"(steps {_statuses(record)})"
                )
        elif status == SagaStatus.FAILED:
            # Every compensation here succeeds within its retries: FAILED means one was
            # called in a way it could not handle, or its retries went to redeliveries.
            self.problems.append(f"{what}: FAILED: {record.error} (steps {_statuses(record)})")
        else:
            self.problems.append(f"{what}: still {status} (steps {_statuses(record)})")


def _order_broken(undone_at: dict[str, float]) -> list[str]:
    """A step undone after a step it depends on (compensations run in reverse order)."""
    return [
        f"{dep} undone before {step}, which depends on it"
        for step, deps in DEPENDS.items()
        for dep in deps
        if step in undone_at and dep in undone_at and undone_at[dep] < undone_at[step]
    ]


def _statuses(record: SagaRecord) -> dict[str, str]:
    return {s.name: f"{s.status.value}/{s.attempts}" for s in record.steps}


def _celery_app(broker_url: str, backend_url: str) -> Celery:
    app = Celery("sagaq-chaos-test", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=broker_url,
        result_backend=backend_url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


@contextmanager
def chaos_engine(
    broker_url: str, backend_url: str, store_url: str, queue: str, pivot: str | None = None
) -> Iterator[tuple[SagaQ, Ledger]]:
    ledger = Ledger(store_url)
    engine = SagaQ(_celery_app(broker_url, backend_url), store=store_url)
    ledger.create_tables()
    engine.register(build_chaos_saga(queue, ledger, pivot))
    try:
        yield engine, ledger
    finally:
        engine.store.dispose()
        ledger.dispose()


def worker_env(broker_url: str, backend_url: str, store_url: str, queue: str) -> dict[str, str]:
    return {
        "SAGAQ_BROKER_URL": broker_url,
        "SAGAQ_RESULT_BACKEND": backend_url,
        "SAGAQ_STORE_URL": store_url,
        "SAGAQ_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "SAGAQ_DEFAULT_QUEUE": queue,
        "SAGAQ_HEARTBEAT": str(HEARTBEAT),
    }


def report(name: str, figures: dict[str, Any], timeline: list[str]) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    path.write_text(json.dumps({**figures, "timeline": timeline}, indent=2) + "\n")
    lines = [f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())]
    text = "\n".join([*lines, *(f"  {t}" for t in timeline), f"  -> {path}"])
    record_summary(name, text)
    return text
