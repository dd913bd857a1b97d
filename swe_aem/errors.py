"""The one base of the errors a user of swe-aem is shown.

A user-facing error carries a message that says what went wrong and what to change; the
CLI (swe_aem/cli.py) catches the base once, prints the message without a traceback and
exits with its kind's code. Each project error also keeps the built-in class it always
had (ValueError, RuntimeError), by multiple inheritance, so callers that catch those hold.

Exit codes (stated in the README):
- 2 `InputError`: the input is wrong (a config key or value, a dataset row, a run folder);
- 3 `SetupError`: something the run needs is missing or unreachable (GPU, vLLM, Docker,
  a model folder, a server, a checkpoint);
- 4 `RunError`: a run that started failed on the way, and a check stopped it (sampling
  parity, a weight push, the fleet, a child process).
Errors meant for the model (a malformed tool call) or internal signals are not of these.
"""

from __future__ import annotations


class SweAemError(Exception):
    """An error whose message is for the user: printed as it is, with `exit_code`."""

    exit_code = 1


class InputError(SweAemError):
    """The input is wrong: a config, a dataset row, a command's arguments, a run folder."""

    exit_code = 2


class SetupError(SweAemError):
    """Something the run needs is missing or unreachable."""

    exit_code = 3


class RunError(SweAemError):
    """A run failed on the way, and a check stopped it rather than train on something wrong."""

    exit_code = 4
