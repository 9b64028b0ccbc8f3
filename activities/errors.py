"""How activities report failures to Temporal: retry what can heal, not what cannot.

A malformed tfvars file, an invalid region name or a config the renderer rejects
fails the same way on every attempt; retrying it six times only delays the
workflow's answer and fills the history. Such errors become non-retryable
``ApplicationError``s (the workflow sees them at once); a network or push race
stays retryable.
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError


def permanent(err: Exception, type_: str | None = None) -> ApplicationError:
    """``err`` as a non-retryable failure: the same input can never succeed."""
    return ApplicationError(str(err), type=type_ or type(err).__name__, non_retryable=True)


def from_repo_error(err: Exception, type_: str = "RepoError") -> ApplicationError:
    """A RepoError, non-retryable when it says the input is wrong (``err.permanent``)."""
    return ApplicationError(
        str(err), type=type_, non_retryable=bool(getattr(err, "permanent", False))
    )
