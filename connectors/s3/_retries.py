"""Retries botocore makes by itself, reported to the pipeline like riprap's own.

botocore retries throttling, 5xx answers and connection errors inside one
client call, where nothing of riprap sees them: a run could report
``retries=0`` while S3 answered 503 half the time. The S3 sink therefore turns
botocore's retries off by default and lets the pipeline's sink policy retry
(one retrier). Where botocore still retries (the source, or a sink given
``S3ClientConfig(max_attempts=...)``), every retry it makes is turned into a
:class:`riprap.policies.RetryScheduled` event for the pipeline's policy hooks
(``SourceContext.policy_hooks``, ``SinkContext.policy_hooks``), so it counts in
the run report and ``riprap_retries_total``, and the sink's is logged.

botocore's event system says when an attempt failed (``needs-retry``, with
its response or exception) and when the next attempt is created
(``request-created``, whose request context carries the attempt number); a
retry is an attempt after the first. The handlers return nothing (an answer
to ``needs-retry`` would change botocore's decision); they only take notes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from riprap import Clock, TransientError
from riprap.policies import RetryScheduled

Hook = Callable[[Any], None]

_FAILURE = "riprap_failed_attempt"
"""Key in botocore's request context: when the last attempt failed, and how."""


def report_retries(
    client: Any, hooks: Sequence[Hook], *, stage: str, clock: Clock, dependency: str = "s3"
) -> None:
    """Tell ``hooks`` of every retry botocore makes for ``client``'s calls.

    Args:
        client: An aiobotocore S3 client.
        hooks: The pipeline's policy hooks (nothing is registered without any).
        stage: The source's or sink's name, which the events carry.
        clock: The pipeline's clock, which stamps the events.
        dependency: The dependency the events name.
    """
    if not hooks:
        return
    events = client.meta.events

    def attempt_failed(
        request_dict: Any = None, response: Any = None, caught_exception: Any = None, **_: Any
    ) -> None:
        context = request_dict.get("context") if isinstance(request_dict, dict) else None
        if isinstance(context, dict):
            context[_FAILURE] = (clock.monotonic(), _error(response, caught_exception))

    def attempt_created(request: Any = None, **_: Any) -> None:
        context = getattr(request, "context", None)
        if not isinstance(context, dict):
            return
        attempt = context.get("retries", {}).get("attempt", 1)
        if not isinstance(attempt, int) or attempt <= 1:
            return
        now = clock.monotonic()
        failed_at, error = context.pop(_FAILURE, (now, TransientError("S3 call retried")))
        event = RetryScheduled(
            stage=stage,
            dependency=dependency,
            at=now,
            attempt=attempt - 1,
            delay=max(now - failed_at, 0.0),
            error=error,
            retry_after=None,
        )
        for hook in hooks:
            hook(event)

    events.register("needs-retry.s3", attempt_failed)
    events.register("request-created.s3", attempt_created)


def _error(response: Any, caught: Any) -> BaseException:
    """The failed attempt's exception, or one describing its error answer."""
    if isinstance(caught, BaseException):
        return caught
    status: object = None
    code: object = None
    if isinstance(response, tuple) and len(response) == 2:
        status = getattr(response[0], "status_code", None)
        parsed = response[1] if isinstance(response[1], dict) else {}
        code = parsed.get("Error", {}).get("Code")
    return TransientError(f"S3 answered {status} {code or ''}".rstrip())
