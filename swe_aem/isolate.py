"""Run a function in a fresh process, for work whose memory Python does not give back.

A DeepSpeed engine's optimizer state, buffers and allocator caches stay resident after
the Python objects are gone, so work that builds engines one after another (the warm
start's SFT, then the RL trainer; the evidence's runs, one after another) gives each
engine a process of its own, whose memory returns to the system when it exits.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from swe_aem.errors import RunError


class ChildDiedError(RunError, RuntimeError):
    """The process ended without a result or an error (killed: out of memory, a signal)."""


def _child(fn: Callable[..., Any], args: tuple, conn: Connection) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:
        try:
            conn.send(("error", exc))
        except (pickle.PicklingError, TypeError, AttributeError):  # still say what it was
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        raise
    conn.send(("ok", result))


def call_in_child(fn: Callable[..., Any], *args: Any, name: str = "run") -> Any:
    """fn(*args) in a spawned process: its (picklable) result is returned and its exception
    raised here; a process that dies first raises ChildDiedError naming `name`."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, send), name=name)
    proc.start()
    send.close()
    try:
        outcome, value = receive.recv()
    except EOFError:  # it died before it could say anything
        outcome, value = "died", None
    except (pickle.UnpicklingError, TypeError, AttributeError, ImportError) as exc:  # unreadable here
        outcome, value = "error", RuntimeError(f"{name} failed ({type(exc).__name__} reading its error)")
    proc.join()
    if outcome == "error":
        raise value
    if outcome == "died":
        how = (f"was killed by signal {-proc.exitcode} (SIGKILL is what the kernel's OOM killer sends)"
               if proc.exitcode is not None and proc.exitcode < 0 else f"exited with status {proc.exitcode}")
        raise ChildDiedError(f"{name} {how} before it finished")
    return value
