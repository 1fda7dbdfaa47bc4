"""Deterministic simulation: the real task bodies, compiler, store (SQLite) and sweeper under a
simulated broker and clock, in one thread, seeded. See README.md in this folder."""
