"""call_in_child: work in a process of its own, its result and its errors brought back."""

from __future__ import annotations

import os
import signal

import pytest

from swe_aem.isolate import ChildDiedError, call_in_child


def test_a_child_returns_its_result_raises_its_error_and_says_how_it_died() -> None:
    assert call_in_child(divmod, 7, 2) == (3, 1)
    assert call_in_child(os.getpid) != os.getpid()  # really another process
    with pytest.raises(ValueError, match="invalid literal"):
        call_in_child(int, "x")
    with pytest.raises(ChildDiedError, match="run grpo, seed 0 exited with status 3 before it finished"):
        call_in_child(os._exit, 3, name="run grpo, seed 0")
    with pytest.raises(ChildDiedError, match="killed by signal 9 .*OOM killer"):
        call_in_child(signal.raise_signal, signal.SIGKILL)


def test_a_child_of_an_initialised_process_starts_its_own_world() -> None:
    """The warm start's SFT and the evidence runs start DeepSpeed in a child that inherits
    MASTER_PORT from a parent whose store may be listening on it (EADDRINUSE in CI)."""
    from swe_aem.train.ranks import init_distributed

    assert init_distributed() == (0, 1)
    assert call_in_child(init_distributed) == (0, 1)
