"""The factory's error tree. Every error says what happened and what to do next.

    FactoryError
    ├── InputError                 bad user input (CLI exit 2)
    │   └── UnknownTeam
    ├── ConfigError                settings that cannot work
    ├── ServiceUnavailable         Postgres, Redis or a model cannot be reached (CLI exit 1)
    ├── ServiceRefused             Postgres or Redis refused a command it received (a fault to report)
    ├── PipelineError              a run cannot proceed
    │   ├── RunNotFound
    │   ├── RunBusy                another process is driving the run
    │   ├── LeaseLost              this process lost the run it drove to another
    │   └── RunFinished            the run is complete, failed or cancelled already (CLI exit 2)
    ├── RoutingError               a model call failed on every deployment
    │   └── BudgetExceeded
    ├── BrokerError
    │   └── ClarificationLimit
    ├── MemoryStoreError
    │   └── AuditTampered
    ├── EscalationError
    │   ├── EscalationNotFound
    │   ├── DecisionRefused        the decision does not fit the escalation (CLI exit 2)
    │   └── DecisionConflict       someone else decided it first
    └── TokenNotFound              no active API token by that name or id (CLI exit 2)

Third-party errors are wrapped at the package boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FactoryError(Exception):
    """Base of every error the factory raises on purpose."""

    exit_code = 1


class InputError(FactoryError):
    """The operator's input is invalid; nothing was written."""

    exit_code = 2


class UnknownTeam(InputError):
    """A team slug that is not on the roster."""


class ConfigError(FactoryError):
    """Settings that cannot work together."""

    exit_code = 2


class ServiceUnavailable(FactoryError):
    """A backing service (Postgres, Redis, a model) cannot be reached."""


class ServiceRefused(FactoryError):
    """PostgreSQL or Redis is up but refused a command (a constraint, a permission, a bug); what was
    committed before stands."""


class PipelineError(FactoryError):
    """A run cannot proceed."""


class RunNotFound(PipelineError):
    """No run with that id."""

    exit_code = 2


class RunBusy(PipelineError):
    """Another process holds the run (it is being driven); nothing was changed."""


class LeaseLost(PipelineError):
    """This process no longer holds the run it was driving (another took it over); it wrote nothing more."""


class RunFinished(PipelineError):
    """The run is complete, failed or cancelled already: what was asked of it (a cancel) cannot be done;
    nothing was changed."""

    exit_code = 2


class RoutingError(FactoryError):
    """A model call failed on every deployment of its alias."""

    def __init__(self, message: str, *, fallbacks: Sequence[Any] = ()) -> None:
        super().__init__(message)
        #: What each deployment tried failed with (``routing.base.Fallback``), for the ledger.
        self.fallbacks = list(fallbacks)


class BudgetExceeded(RoutingError):
    """A team or run budget is spent."""


class BrokerError(FactoryError):
    """The clarification broker failed."""


class ClarificationLimit(BrokerError):
    """A clarification request was refused by a broker limit."""


class MemoryStoreError(FactoryError):
    """Memory or audit storage failed."""


class AuditTampered(MemoryStoreError):
    """An audit chain does not verify."""


class EscalationError(FactoryError):
    """An escalation cannot be created or decided."""


class EscalationNotFound(EscalationError):
    """No escalation with that id."""

    exit_code = 2


class DecisionRefused(EscalationError):
    """The decision does not fit the escalation (e.g. a reject without a reason); nothing was changed."""

    exit_code = 2


class DecisionConflict(EscalationError):
    """The escalation was decided (or changed) by someone else first; nothing was changed."""


class TokenNotFound(FactoryError):
    """No active API token has that name or id (unknown, or revoked already); nothing was changed."""

    exit_code = 2


__all__ = [
    "AuditTampered",
    "BrokerError",
    "BudgetExceeded",
    "ClarificationLimit",
    "ConfigError",
    "DecisionConflict",
    "DecisionRefused",
    "EscalationError",
    "EscalationNotFound",
    "FactoryError",
    "InputError",
    "LeaseLost",
    "MemoryStoreError",
    "PipelineError",
    "RoutingError",
    "RunBusy",
    "RunFinished",
    "RunNotFound",
    "ServiceRefused",
    "ServiceUnavailable",
    "TokenNotFound",
    "UnknownTeam",
]
