"""Fault injection for the fault suite (``tests/test_faults.py``), off unless asked for.

``DEPLOYTOOLS_FAULT=<point>[:<action>]`` makes the deploying process act at a named point of
the pipeline: ``before:switch``, ``after:upload``, ``undo:switch back``, … (``point`` calls
mark them). The action is ``SIGKILL`` (the default: the process dies on the spot, as with
``kill -9``), ``SIGTERM`` or ``SIGINT`` (sent to itself, so the handlers run). The point
``lost:<command>`` instead runs that command on the first host, then cuts the connection before
its result is read: the command ran, the deploy cannot know it.
"""

from __future__ import annotations

import os
import signal
import threading

VARIABLE = "DEPLOYTOOLS_FAULT"
_lost_once = threading.Lock()


def _wanted() -> tuple[str, str] | None:
    value = os.environ.get(VARIABLE)
    if not value:
        return None
    point, _, action = value.rpartition(":")
    if action not in ("SIGKILL", "SIGTERM", "SIGINT"):
        return value, "SIGKILL"
    return point, action


def point(name: str) -> None:
    """Act here if the fault names this point."""
    wanted = _wanted()
    if wanted is None or wanted[0] != name:
        return
    os.kill(os.getpid(), getattr(signal, wanted[1]))


def lose_connection(command: str) -> bool:
    """Whether the fault asks to cut the connection after ``command`` ran (once)."""
    wanted = _wanted()
    if wanted is None or wanted[0] != f"lost:{command}":
        return False
    return _lost_once.acquire(blocking=False)
