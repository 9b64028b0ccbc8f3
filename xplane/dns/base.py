"""What every provider adapter shares at the I/O edge: credentials and the one error
classifier. The plan itself (diff, ownership, safety, quantising) is :mod:`xplane.dns.plan`.

Secrets come from the environment or a file named in the config, never logged.
"""

from __future__ import annotations

import os

from xplane.dns import ratelimit
from xplane.dns.plan import DnsAuthError, DnsError, DnsRetryableError, DnsValidationError

THROTTLING_CODES = ("Throttling", "RequestLimitExceeded")


def read_secret(env_name: str | None, file_path: str | None = None) -> str:
    """A credential from a file (preferred when named) or the environment; never logged."""
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as err:
            raise DnsAuthError(f"cannot read credential file {file_path}: {err.strerror}") from None
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    raise DnsAuthError(f"credential not set: environment variable {env_name} is empty")


def unreachable(where: str, err: Exception) -> DnsRetryableError:
    """A call that got no answer (connection refused, timeout): retried."""
    return DnsRetryableError(f"{where}: {type(err).__name__}: {err}")


def api_error(
    message: str,
    status: int,
    code: str = "",
    *,
    bucket: ratelimit.RateLimiter | None = None,
    retry_after: str | None = None,
    retryable: tuple[str, ...] = (),
    auth: tuple[str, ...] = (),
) -> DnsError:
    """The error class for a failed provider API call (codes match by prefix).

    A throttled answer (429 or a ``Throttling`` code) pauses the account's ``bucket`` for
    its ``Retry-After``; 408, 429, 5xx and the provider's ``retryable`` codes are retried;
    401, 403 and its ``auth`` codes are not, nor is any other 4xx (a validation error).
    """
    throttled = status == 429 or code.startswith(THROTTLING_CODES)
    if throttled and bucket is not None:
        return ratelimit.throttled(bucket, message, ratelimit.parse_retry_after(retry_after))
    if throttled or code.startswith(retryable) or status == 408 or status >= 500:
        return DnsRetryableError(message)
    if code.startswith(auth) or status in (401, 403):
        return DnsAuthError(message)
    return DnsValidationError(message)
