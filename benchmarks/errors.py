"""Errors that stop a cell or a run cleanly, as opposed to failing it.

Both are `BenchError`s (one line on the command line, no traceback). The runner treats them
apart from other errors: `BudgetExhausted` ends one cell, keeping its finished predictions and
marking it ``budget_exhausted``; `BackendUnavailable` ends the run, keeping every finished cell
for ``--resume``, since no later cell could reach the model either.
"""

from __future__ import annotations

from methods.registry import BenchError


class BudgetExhausted(BenchError):
    """The next call would take spending past a cap; nothing was sent for it.

    Attributes:
        flag: the option that set the cap (``--max-cell-usd`` ...), for messages.
        scope: "run" or "cell".
    """

    def __init__(self, message: str, *, flag: str, scope: str):
        super().__init__(message)
        self.flag = flag
        self.scope = scope


class BackendUnavailable(BenchError):
    """The endpoint cannot be reached (its server died, the connection keeps failing)."""
