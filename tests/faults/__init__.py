"""The fault suite: a real farm (master, builders, Redis, PostgreSQL as processes) with
faults injected while work is in flight, then checked against an undisturbed run."""
