"""One exception tree for cfclassify, and the exit codes cron reads.

Every error a user can meet is a ``CfclassifyError``; its class decides the exit code. Lower-level
exceptions (OSError, sqlite3, httpx, PIL) are converted into this tree at one boundary, with
``raise ... from exc``, and nowhere else::

    CfclassifyError                      exit 1 unless said otherwise
    ├── ConfigError                      bad config file, value or missing credential
    ├── StoreError                       database cannot be opened or is not SQLite
    │   └── DatabaseBusy                 another process holds the database      (75)
    ├── RunLocked                        another run holds the run lock           (75)
    ├── BudgetExhausted                  the day's neuron budget is spent         (75)
    ├── ImageError                       one image cannot be prepared: fail it, go on
    └── ApiError                         Workers AI answered with an error
        ├── FatalApiError                needs a person: token, model, account
        │   ├── AuthError                401 / 403 without a code
        │   ├── ModelError               5007 / 3042
        │   └── AccountError             3023 / 3041 / 5018
        ├── QuotaExceeded                3036 / 4006: no more requests this UTC day (75)
        ├── RetryableApiError            429, 3040, 3021, 408, 5xx: retried (75 once retries run out)
        │   └── RateLimited              429-family: honour Retry-After
        ├── OutcomeUnknown               connection lost after the body was sent (75)
        ├── PayloadTooLarge              3006 / 413: re-encode smaller once
        └── BadImage                     3003 / 5004 / 400: fail that image only

``Interrupted`` is not an error: it carries the signal exit code (130 / 143).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: cron may simply run again later
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class CfclassifyError(Exception):
    """Base of every error cfclassify reports to a user."""

    exit_code: int = EXIT_FATAL


class ConfigError(CfclassifyError):
    """The configuration is unusable: names the file and key, or the variable to set."""


class StoreError(CfclassifyError):
    """The database cannot be used (not SQLite, unreadable, newer schema)."""


class DatabaseBusy(StoreError):
    """Another process holds a write lock on the database for longer than the busy timeout."""

    exit_code = EXIT_TEMPFAIL


class RunLocked(CfclassifyError):
    """Another ``cfclassify run`` on the same database is in progress."""

    exit_code = EXIT_TEMPFAIL

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class BudgetExhausted(CfclassifyError):
    """The neuron budget for the UTC day (or the run) leaves no room for another image."""

    exit_code = EXIT_TEMPFAIL


class ImageError(CfclassifyError):
    """One file cannot be turned into an upload; the image is marked failed with ``reason``."""

    def __init__(self, reason: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


class ApiError(CfclassifyError):
    """Workers AI (or the gateway) answered with an error, or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.attempts = attempts

    def __str__(self) -> str:
        parts = [super().__str__()]
        detail = []
        if self.status is not None:
            detail.append(f"HTTP {self.status}")
        if self.code is not None:
            detail.append(f"code {self.code}")
        if self.attempts > 1:
            detail.append(f"after {self.attempts} attempts")
        if detail:
            parts.append(f"({', '.join(detail)})")
        return " ".join(parts)


class FatalApiError(ApiError):
    """An error no retry can fix: a person must change the token, model or account."""


class AuthError(FatalApiError):
    """The API token is missing, wrong, or lacks the Workers AI permissions."""


class ModelError(FatalApiError):
    """The model id is unknown to Workers AI."""


class AccountError(FatalApiError):
    """The account is blocked or not allowed to use Workers AI."""


class QuotaExceeded(ApiError):
    """The account's daily free allocation is used up; nothing more until 00:00 UTC."""

    exit_code = EXIT_TEMPFAIL


class RetryableApiError(ApiError):
    """A passing fault (capacity, rate limit, timeout, 5xx); raised once retries are used up."""

    exit_code = EXIT_TEMPFAIL

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, attempts=attempts)
        self.retry_after = retry_after


class RateLimited(RetryableApiError):
    """HTTP 429 that is not a quota error: slow down and honour Retry-After."""


class OutcomeUnknown(ApiError):
    """The request body was sent but no answer came back: we may have been billed."""

    exit_code = EXIT_TEMPFAIL


class PayloadTooLarge(ApiError):
    """3006 / HTTP 413: the upload is too large; the caller may re-encode it smaller once."""


class BadImage(ApiError):
    """3003 / 5004 / HTTP 400: the service rejected this image's data."""


class Interrupted(Exception):
    """The run was stopped by a signal after recording what was in flight."""

    def __init__(self, signum_exit_code: int) -> None:
        super().__init__(f"interrupted (exit {signum_exit_code})")
        self.exit_code = signum_exit_code
