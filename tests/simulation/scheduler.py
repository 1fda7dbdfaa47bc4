"""The scheduler: one seeded random walk through deliveries and faults.

Every delivery (and every cancel, retry or sweep) runs in its own greenlet, all in one thread.
A greenlet runs until it finishes or parks: at a checkpoint in user code, or in a publish. The
scheduler then decides, with the seeded RNG, what happens next: deliver a message, resume a
parked worker, or inject a fault. Only one thing runs at a time and every choice comes from
the seed, so a schedule replays exactly."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery
from celery.canvas import Signature
from greenlet import greenlet
from sqlalchemy import select

from sagaq import StepContext
from sagaq.compiler import (
    BARRIER_TASK,
    COMPENSATION_DONE_TASK,
    SAGA_DONE_TASK,
    STEP_FAILED_TASK,
)
from sagaq.definition.saga import Saga
from sagaq.errors import SagaqError
from sagaq.observability.events import EventBus
from sagaq.runtime.base import Delivery, Fail, Halt, Outcome, Proceed, Retry, Runtime
from sagaq.runtime.control import on_step_failed
from sagaq.runtime.launch import cancel, retry
from sagaq.runtime.steps import execute_step
from sagaq.runtime.sweeper import sweep
from sagaq.runtime.undo import execute_compensation
from sagaq.status import SagaStatus
from sagaq.store import SagaStore
from sagaq.store.schema import saga as saga_table
from tests.simulation.canvas import Continuation, Message, leaves, on_failure, on_success
from tests.simulation.faults import Faults, SimCrash
from tests.simulation.ledger import Ledger
from tests.simulation.world import Queue, SimClock, SimHeartbeats

# A short lease (3 s) keeps schedules cheap: waiting tasks poll every 0.1-2 s, so the wait for a
# dead worker's lease costs deliveries in proportion to the lease.
HEARTBEAT = 1.0
LEASE = 3 * HEARTBEAT
STALL_AFTER = LEASE  # the sweeper's default
BEAT = 10.0  # how often the periodic sweep runs
MAX_EVENTS = 4000


@dataclass
class Work:
    """Something running in a greenlet: a delivery, or an operator/sweeper action."""

    label: str
    run: greenlet
    message: Message | None = None
    until: float = 0.0  # a parked worker resumes no earlier than this
    publishing: bool = False  # parked in a publish: dying there loses what it publishes


@dataclass
class Sim:
    seed: int
    store: SagaStore
    clock: SimClock
    app: Celery
    sagas: dict[str, Saga]
    faults: Faults
    rng: random.Random
    ledger: Ledger = field(default_factory=Ledger)
    trace: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    queue: Queue = field(default_factory=Queue)
    parked: list[Work] = field(default_factory=list)
    current: Work | None = None
    healed: bool = False
    lost: bool = False  # a message or publish was lost: sweeps may be needed
    events: int = 0
    fault_budget: int = 12
    repairs: int = 0  # what sweeps re-published or resumed
    next_beat: float = 0.0
    task_ids: int = 0
    names: dict[str, str] = field(default_factory=dict)  # saga id -> short name

    def __post_init__(self) -> None:
        self.main = greenlet.getcurrent()
        self.heartbeats = SimHeartbeats(self.store)
        self.rt = self.runtime("sim")
        self.tasks: dict[str, tuple[Saga, str, bool]] = {}

    def runtime(self, hostname: str) -> Runtime:
        """A worker process's Runtime on the simulated broker, clock and heartbeats."""
        return Runtime(
            self.app,
            self.store,
            EventBus(),
            self.sagas,
            send=self.publish,
            heartbeat=HEARTBEAT,
            hostname=hostname,
            heartbeats=self.heartbeats,  # type: ignore[arg-type]
        )

    def register(self, saga: Saga) -> None:
        """What SagaQ.register does for the worker: one task per step and compensation."""
        self.sagas[saga.name] = saga
        for step in saga.steps:
            self.tasks[f"{saga.name}.{step}"] = (saga, step, False)
            self.tasks[f"{saga.name}.{step}.compensate"] = (saga, step, True)

    # -- tracing ------------------------------------------------------------------------

    def short(self, saga_id: str) -> str:
        return self.names.get(saga_id, saga_id[-4:])

    def log(self, text: str) -> None:
        self.trace.append(f"{self.clock.now - 1_000_000.0:9.2f}  {text}")

    def violation(self, text: str) -> None:
        self.problems.append(text)
        self.log(f"VIOLATION {text}")

    def describe(self, message: Message) -> str:
        kw = message.kwargs
        who = self.short(str(kw.get("saga_id", "")))
        step = f" {kw['step']}" if "step" in kw else ""
        return f"{message.task}{step} [{who}] {message.task_id}#{message.retries}"

    # -- hooks for user code (effects.py) ------------------------------------------------

    def status_of(self, saga_id: str) -> SagaStatus | None:
        with self.store._begin() as conn:
            found = conn.execute(
                select(saga_table.c.status).where(saga_table.c.id == saga_id)
            ).scalar()
        return SagaStatus(found) if found else None

    def checkpoint(self, where: str, ctx: StepContext, *, hold: float = 0.0) -> None:
        work = self.current
        if work is None or work.message is None:
            return
        what = f"{ctx.step} [{self.short(ctx.saga_id)}] attempt {ctx.attempt} {where}"
        choice = self.at_checkpoint(where, ctx)
        if choice == "crash":
            self.log(f"crash: worker dies {what}")
            raise SimCrash(where)
        if hold or choice == "park":
            self.log(f"stall: {what}" + (f" for {hold:g}s" if hold else ""))
            if self.chance(min(1.0, 5 * self.faults.duplicate)):
                # at-least-once: the broker hands the same message to another worker meanwhile
                self.log(f"duplicate {self.describe(work.message)} (running)")
                self.again(work.message, retries=work.message.retries, eta=self.clock.now)
            self.park(work, self.clock.now + hold)

    # -- the decisions a schedule makes (scripted.py overrides them) ----------------------

    def chance(self, p: float) -> bool:
        """Does a fault of probability `p` happen now? Each schedule has a fault budget: the
        rates are per event, and a saga that polls a lot must not draw faults for ever."""
        if p <= 0 or self.fault_budget <= 0:
            return False
        hit = self.rng.random() < p
        self.fault_budget -= hit
        return hit

    def at_checkpoint(self, where: str, ctx: StepContext) -> str:
        """At a checkpoint in user code: "crash", "park" or "go"."""
        if self.chance(self.faults.crash):
            return "crash"
        return "park" if self.chance(self.faults.park) else "go"

    def before_ack(self, message: Message) -> tuple[bool, bool]:
        """(the worker dies before the ack, what Celery sends on the way out still left)."""
        crash = self.chance(self.faults.ack_crash)
        return crash, not crash or self.rng.random() < 0.5

    def redelivery_delay(self, message: Message) -> float | None:
        """When a message whose worker died comes back; None: never (lost)."""
        if self.chance(self.faults.lose):
            return None
        return self.rng.choice([0.0, 0.1, LEASE + 0.5])

    def park(self, work: Work, until: float) -> None:
        """Give control back to the scheduler; it resumes this greenlet (or kills it) later."""
        work.until = until
        self.parked.append(work)
        self.current = None
        self.main.switch()
        self.current = work

    # -- the broker ------------------------------------------------------------------------

    def publish(self, sig: Signature) -> None:
        """rt.send: how the runtime publishes canvas."""
        work = self.current
        if work is not None and self.chance(self.faults.publish_park):
            self.log(f"stall: publish by {work.label}")
            work.publishing = True
            self.park(work, self.clock.now)
            work.publishing = False
        if self.chance(self.faults.publish_drop):
            self.lost = True
            self.log(f"lost: publish of {sig!r:.80}")
            return
        self.send(sig, None)

    def send(self, sig: Signature, then: Continuation, *, delay: float = 0.0) -> None:
        for task, after in leaves(sig, then):
            self.task_ids += 1
            message = Message(f"t{self.task_ids}", 0, task, after, self.clock.now + delay)
            self.queue.put(message)

    def again(self, message: Message, *, retries: int, eta: float) -> None:
        copy = Message(message.task_id, retries, message.sig, message.then, eta)
        self.queue.put(copy)

    # -- running -----------------------------------------------------------------------------

    def spawn(self, label: str, body: Callable[[], None], message: Message | None = None) -> None:
        work = Work(label, greenlet(body), message)
        self.enter(work, None)

    def enter(self, work: Work, throw: BaseException | None) -> None:
        self.current = work
        if throw is None:
            work.run.switch()
        else:
            work.run.throw(throw)
        self.current = None

    def deliver(self, message: Message) -> None:
        self.log(f"deliver {self.describe(message)}")

        def body() -> None:
            try:
                outcome = self.dispatch(message)
            except SimCrash:
                self.redeliver(message, "worker died")
                return
            except Exception as exc:  # escaped the task body: Celery marks the task failed
                self.violation(f"{self.describe(message)} raised {exc!r}")
                outcome = Fail(exc)
            self.settle(message, outcome)

        self.spawn(self.describe(message), body, message)

    def dispatch(self, message: Message) -> Outcome:
        kw = message.kwargs
        task = message.task
        rt = self.rt
        if task == STEP_FAILED_TASK:
            return on_step_failed(rt, self.sagas[kw["saga"]], kw["saga_id"], kw["step"])
        if task == SAGA_DONE_TASK:
            rt.store.finish_saga(kw["saga_id"])
            return Proceed()
        if task == COMPENSATION_DONE_TASK:
            rt.store.finish_compensation(kw["saga_id"])
            return Proceed()
        if task == BARRIER_TASK:  # Celery's built-in no-op between layers of a DAG
            return Proceed()
        saga, step, compensation = self.tasks[task]
        delivery = Delivery(message.task_id, message.retries)
        run = execute_compensation if compensation else execute_step
        return run(rt, saga, saga.steps[step], kw["saga_id"], delivery)

    def settle(self, message: Message, outcome: Outcome) -> None:
        """What Celery does with the outcome; or the worker dies before the ack."""
        name = type(outcome).__name__
        detail = f" {outcome.delay:g}s" if isinstance(outcome, Retry) else ""
        crash, sent = self.before_ack(message)
        self.log(f"  -> {name}{detail} {self.describe(message)}" + (" (no ack)" if crash else ""))
        # Dying before the ack: what Celery sent on the way out may or may not have left.
        if sent:
            if isinstance(outcome, Proceed):
                for task, after in on_success(message.then):
                    self.send(task, after)
            elif isinstance(outcome, Retry):
                self.again(message, retries=message.retries + 1, eta=self.clock.now + outcome.delay)
            elif isinstance(outcome, Fail):
                for errback in on_failure(message.sig, message.then):
                    self.send(errback, None)
            else:
                assert isinstance(outcome, Halt)
        if crash:
            self.redeliver(message, "died before the ack")

    def redeliver(self, message: Message, why: str) -> None:
        """acks_late: a message whose worker died comes back (soon, or after the visibility
        timeout), unless this schedule loses it."""
        delay = self.redelivery_delay(message)
        if delay is None:
            self.lost = True
            self.log(f"  lost: {self.describe(message)} ({why})")
            return
        self.log(f"  redeliver in {delay:g}s: {self.describe(message)} ({why})")
        self.again(message, retries=message.retries, eta=self.clock.now + delay)

    def act(self, label: str, action: Callable[[], None]) -> None:
        """An operator or sweeper action, in its own greenlet (it may stall in a publish)."""
        self.log(label)

        def body() -> None:
            try:
                action()
            except SagaqError as exc:
                self.log(f"  {label}: {type(exc).__name__}: {str(exc)[:90]}")
            except SimCrash:
                self.log(f"  {label}: died")

        self.spawn(label, body)

    def advance(self, to: float) -> None:
        if to > self.clock.now:
            self.clock.now = to
            self.heartbeats.beat()

    # -- the walk --------------------------------------------------------------------------

    def step_once(self) -> bool:
        """One scheduler event. False when nothing can happen any more (quiescent)."""
        self.events += 1
        now = self.clock.now
        ready = self.queue.ready(now)
        resumable = [w for w in self.parked if w.until <= now]
        if not ready and not resumable:
            due = [m.eta for m in self.queue.messages] + [w.until for w in self.parked]
            if not due:
                return False
            self.advance(min(due))
            return True
        # Celery beat runs the sweeper periodically; only once something was lost, so that a
        # schedule without losses shows whether sagas finish without any sweep.
        if self.lost and now >= self.next_beat:
            self.next_beat = now + BEAT
            self.act("beat: sweep", self.sweep)
            return True
        if self.inject(ready):
            return True
        choices: list[Message | Work] = [*ready, *resumable]
        if self.rng.random() < self.faults.out_of_order:
            chosen = self.rng.choice(choices)
        else:
            chosen = min(ready, key=lambda m: m.seq) if ready else resumable[0]
        if isinstance(chosen, Work):
            self.parked.remove(chosen)
            self.log(f"resume {chosen.label}")
            self.enter(chosen, None)
        else:
            self.queue.take(chosen)
            self.deliver(chosen)
        return True

    def inject(self, ready: list[Message]) -> bool:
        """Maybe one fault between deliveries. True when one happened."""
        if self.fault_budget <= 0:
            return False
        roll = self.rng.random()
        for name in ("drop", "duplicate", "kill", "jump", "cancel", "retry", "sweep"):
            chance: float = getattr(self.faults, name)
            if roll < chance:
                happened = bool(getattr(self, f"fault_{name}")(ready))
                self.fault_budget -= happened
                return happened
            roll -= chance
        return False

    def fault_drop(self, ready: list[Message]) -> bool:
        if not ready:
            return False
        message = self.rng.choice(ready)
        self.queue.take(message)
        self.lost = True
        self.log(f"drop {self.describe(message)}")
        return True

    def fault_duplicate(self, ready: list[Message]) -> bool:
        running = [w.message for w in self.parked if w.message is not None]
        # A running one when there is one, half the time: the duplicate that matters most.
        pool = running if running and self.rng.random() < 0.5 else ready + running
        if not pool:
            return False
        message = self.rng.choice(pool)
        running_note = " (running)" if message in running else ""
        self.log(f"duplicate {self.describe(message)}{running_note}")
        self.again(message, retries=message.retries, eta=self.clock.now)
        return True

    def fault_kill(self, ready: list[Message]) -> bool:
        victims = [w for w in self.parked if w.message is not None]
        if not victims:
            return False
        work = self.rng.choice(victims)
        self.parked.remove(work)
        self.log(f"kill {work.label}" + (" (its publish is lost)" if work.publishing else ""))
        self.lost = self.lost or work.publishing
        self.enter(work, SimCrash("killed"))
        return True

    def fault_jump(self, ready: list[Message]) -> bool:
        by = self.rng.choice([0.05, LEASE + 0.1, STALL_AFTER + 0.5, 10.0, 50.0])
        self.log(f"clock +{by:g}s")
        self.advance(self.clock.now + by)
        return True

    def _pick_saga(self) -> tuple[Saga, str] | None:
        if not self.names:
            return None
        saga_id = self.rng.choice(sorted(self.names))
        record = self.store.get(saga_id)
        if record is None:
            return None
        return self.sagas[record.name], saga_id

    def fault_cancel(self, ready: list[Message]) -> bool:
        picked = self._pick_saga()
        if picked is None:
            return False
        saga, saga_id = picked
        self.act(f"cancel [{self.short(saga_id)}]", lambda: cancel(self.rt, saga, saga_id, "sim"))
        return True

    def fault_retry(self, ready: list[Message]) -> bool:
        picked = self._pick_saga()
        if picked is None:
            return False
        saga, saga_id = picked
        self.act(f"retry [{self.short(saga_id)}]", lambda: retry(self.rt, saga, saga_id))
        return True

    def fault_sweep(self, ready: list[Message]) -> bool:
        self.act("sweep", self.sweep)
        if self.rng.random() < 0.3:  # a second sweeper, from another process, at once
            other = self.runtime("sim2")
            self.act("sweep (second sweeper)", lambda: self.sweep(other))
        return True

    def sweep(self, rt: Runtime | None = None) -> None:
        report = sweep(rt or self.rt, stall_after=STALL_AFTER)
        if report.examined:
            self.log(f"  sweep: {report}")
        repairs = report.republished + report.resumed + report.compensations_resumed
        self.repairs += repairs + report.failures

    def run_until_quiet(self, budget: int = MAX_EVENTS) -> bool:
        """Run events until nothing can happen. False if `budget` events did not suffice
        (something keeps polling: a livelock)."""
        return any(not self.step_once() for _ in range(budget))
