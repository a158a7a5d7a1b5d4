"""User-facing errors: one clear line and an exit code, never a traceback wall.

Code that detects bad input (a config, a data file, a model directory, a command-line value) raises
``UsageError``; the CLI prints ``error: <message>`` and exits with code 2. ``RunError`` is for a run that
started and had to stop (divergence, disk full): the CLI prints the message and exits with code 1.
"""


class MathRLError(Exception):
    exit_code = 1


class UsageError(MathRLError):
    """Bad input detected before (or instead of) doing the work: exit code 2."""

    exit_code = 2


class RunError(MathRLError):
    """A run stopped with a reason the user must see (divergence, I/O failure): exit code 1."""

    exit_code = 1
