"""The one seeding function: every random choice in qlib takes a seed derived here.

``derive_seed(*parts)`` is the first 4 bytes (big-endian) of sha256 over ``":".join(map(str, parts))``,
masked to 31 bits: stable across processes, platforms and ``PYTHONHASHSEED``. Callers name what the
seed is for in ``parts`` (e.g. ``derive_seed("task", seed, env, task_id)`` for one task's search,
``derive_seed(seed, env, task_id, step, trajectory)`` for one policy call of an episode).
"""
from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from ``parts``."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
