"""The one exception tree of labdock.

Every error carries a message a person can act on. The web layer maps the
classes to HTTP status codes; the CLI prints the message and exits.

    >>> raise QuotaExceeded("needs 4 GiB; 2.5 GiB left in team 'risk' quota")
"""

from __future__ import annotations


class LabdockError(Exception):
    """Base of every error labdock raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LabdockError):
    """The configuration is invalid; the message names the key."""


class NotFound(LabdockError):
    """A user, server, environment or token does not exist."""


class Conflict(LabdockError):
    """The request contradicts the current state (name taken, already running)."""


class InvalidInput(LabdockError):
    """The request is malformed or a value is out of range."""


class Unauthorized(LabdockError):
    """No valid credentials were presented."""


class Forbidden(LabdockError):
    """Credentials are valid but do not allow this action."""


class QuotaExceeded(Forbidden):
    """Admission refused the launch; the message gives the numbers."""


class TooManyRequests(LabdockError):
    """Too much at once; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendUnavailable(LabdockError):
    """The container engine cannot be reached; state is unknown, not stopped."""


class EngineRefused(BackendUnavailable):
    """The container engine answered but refused the request; the message is its reason."""


class LaunchFailed(LabdockError):
    """A server did not become ready; ``logs`` holds its last lines."""

    def __init__(self, message: str, logs: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.logs = logs


class SchemaTooNew(LabdockError):
    """The database was migrated by a newer labdock than this one."""
