"""The fault menu, and how often a schedule uses each fault (drawn per schedule: many
schedules use a few faults hard, some use none)."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields


class SimCrash(BaseException):
    """The worker process died here. A BaseException, so it passes through the runtime's
    `except Exception` exactly as a killed process would stop it."""


@dataclass
class Faults:
    # at a checkpoint in user code (before/after the effect or the undo)
    crash: float = 0.0  # the worker dies
    park: float = 0.0  # the worker stalls (alive, heartbeating) while other things happen
    # around a delivery
    ack_crash: float = 0.0  # the body returned, the worker dies before the ack
    lose: float = 0.0  # a message a dead worker held is never redelivered (sweeper)
    publish_park: float = 0.0  # a publish stalls while other things happen
    publish_drop: float = 0.0  # a publish is lost
    out_of_order: float = 0.0  # deliver any ready message, not the oldest
    # between deliveries (per scheduler event)
    drop: float = 0.0  # a queued message vanishes
    duplicate: float = 0.0  # a queued or running message is delivered twice
    kill: float = 0.0  # a stalled worker dies
    jump: float = 0.0  # the clock jumps (past leases, stall_after, deadlines)
    cancel: float = 0.0
    retry: float = 0.0
    sweep: float = 0.0  # a sweeper pass (sometimes two at once)

    @classmethod
    def draw(cls, rng: random.Random) -> Faults:
        levels = {
            "crash": 0.05,
            "park": 0.15,
            "ack_crash": 0.05,
            "lose": 0.2,
            "publish_park": 0.1,
            "publish_drop": 0.02,
            "out_of_order": 0.5,
            "drop": 0.01,
            "duplicate": 0.04,
            "kill": 0.05,
            "jump": 0.04,
            "cancel": 0.02,
            "retry": 0.01,
            "sweep": 0.03,
        }
        if rng.random() < 0.1:
            return cls()  # a clean run: everything must just work, without any sweep
        return cls(
            **{
                name: (level * rng.choice([0.5, 1, 2]) if rng.random() < 0.5 else 0.0)
                for name, level in levels.items()
            }
        )

    def summary(self) -> str:
        on = [f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name)]
        return ", ".join(on) or "none"
