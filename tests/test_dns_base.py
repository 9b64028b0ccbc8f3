"""What every provider adapter shares (xplane/dns/base.py): the one error classifier and
reading credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from xplane.dns import ratelimit
from xplane.dns.base import api_error, read_secret
from xplane.dns.plan import DnsAuthError, DnsRetryableError, DnsValidationError
from xplane.dns.ratelimit import DnsThrottledError, RateLimiter


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, "", DnsRetryableError),
        (408, "", DnsRetryableError),
        (429, "", DnsRetryableError),
        (400, "Throttling.User", DnsRetryableError),
        (400, "PriorRequestNotComplete", DnsRetryableError),
        (401, "", DnsAuthError),
        (404, "InvalidAccessKeyId.NotFound", DnsAuthError),
        (422, "", DnsValidationError),
        (400, "InvalidChangeBatch", DnsValidationError),
    ],
)
def test_one_classifier_for_every_provider(status: int, code: str, error: type) -> None:
    found = api_error(
        "x: call: failed",
        status,
        code,
        retryable=("PriorRequestNotComplete",),
        auth=("InvalidAccessKeyId",),
    )
    assert type(found) is error and str(found) == "x: call: failed"
    assert found.retryable is (error is DnsRetryableError)


def test_a_throttled_answer_pauses_the_account() -> None:
    now = [0.0]
    bucket = RateLimiter(None, name="test", clock=lambda: now[0], sleep=lambda _: None)
    found = api_error("x: call: HTTP 429", 429, bucket=bucket, retry_after="30")
    assert isinstance(found, DnsThrottledError) and found.retry_after == 30
    assert "Retry-After 30" in str(found)
    with pytest.raises(DnsThrottledError, match="paused"):
        bucket.acquire()  # nothing more goes out before Retry-After
    assert ratelimit.parse_retry_after(None) is None


def test_credentials_come_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cr3t\n")
    assert read_secret("XPLANE_TEST_UNSET", str(secret)) == "s3cr3t"
    monkeypatch.setenv("XPLANE_TEST_KEY", "from-env")
    assert read_secret("XPLANE_TEST_KEY") == "from-env"
    with pytest.raises(DnsAuthError, match="XPLANE_TEST_UNSET"):
        read_secret("XPLANE_TEST_UNSET")
    with pytest.raises(DnsAuthError, match="cannot read credential file"):
        read_secret(None, str(tmp_path / "missing"))
