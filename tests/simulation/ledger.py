"""The ledger of applied effects, keyed by `ctx.idempotency_key`: what the outside world saw.

A "do" applies a key's effect once; an "undo" removes it once. Duplicates are idempotent (a
real payment API would refuse the second charge for the same key) but counted, so a check can
say how often a step ran. Every entry has a sequence number, so order can be checked too."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class KeyHistory:
    """What happened to one idempotency key, in order."""

    applied: bool = False  # the effect stands right now
    dos: int = 0
    undos: int = 0
    first_do: int | None = None  # sequence numbers
    last_undo: int | None = None
    undo_before_do: bool = False  # an undo found nothing to undo...
    redone_after_undo: bool = False  # ...or the effect landed again after being undone


@dataclass
class Ledger:
    keys: dict[str, KeyHistory] = field(default_factory=dict)
    seq: int = 0

    def _key(self, key: str) -> KeyHistory:
        return self.keys.setdefault(key, KeyHistory())

    def do(self, key: str) -> None:
        self.seq += 1
        entry = self._key(key)
        entry.dos += 1
        if entry.first_do is None:
            entry.first_do = self.seq
        if not entry.applied and entry.undos:
            entry.redone_after_undo = True
        entry.applied = True

    def undo(self, key: str) -> None:
        self.seq += 1
        entry = self._key(key)
        entry.undos += 1
        entry.last_undo = self.seq
        if not entry.applied and entry.dos == 0:
            entry.undo_before_do = True
        entry.applied = False

    def of(self, key: str) -> KeyHistory:
        return self.keys.get(key, KeyHistory())
