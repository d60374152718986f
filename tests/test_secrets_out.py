"""Secrets and personal data raised inside a run never leave it (I10).

Each example generates one secret of every kind, puts them all in the text of
errors raised from a step and from a sink, and looks for them where error text
goes: the stdout and stderr of ``python -m riprap.cli -v run`` (its report with
the whole traceback, its console or JSON logs), the dead letters' messages and
tracebacks, and the error ``riprap.run`` raises.
"""

from __future__ import annotations

import functools
import json
import logging
import string
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import riprap
import riprap.checkpoints
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.deadletters import read_dead_letters
from riprap.observability import Redactor, redact_url
from riprap.testing import VirtualClock, run_pipeline

if TYPE_CHECKING:
    from pathlib import Path

_WORD = st.text(string.ascii_letters + string.digits, min_size=12, max_size=24)
_LOWER = st.text(string.ascii_lowercase, min_size=6, max_size=12)


def _luhn_complete(body: str) -> str:
    """``body`` followed by the check digit that makes it a Luhn-valid card number."""
    total = 0
    for i, char in enumerate(reversed(body)):
        digit = int(char) * (1 if i % 2 else 2)
        total += digit - 9 if digit > 9 else digit
    return body + str(-total % 10)


@st.composite
def _secrets(draw: st.DrawFn) -> dict[str, str]:
    """One secret of every kind, by kind."""
    body = "4" + draw(st.text("0123456789", min_size=14, max_size=14))
    kinds = [
        "dsn_password",
        "bearer",
        "api_key_header",
        "api_key_query",
        "password_pair",
        "cookie",
        "signature",
    ]
    # A tag of its own keeps each value from being a substring of another.
    words = {kind: f"{kind[:2]}{i}Q{draw(_WORD)}" for i, kind in enumerate(kinds)}
    return {
        "card": _luhn_complete(body),
        "email": f"{draw(_LOWER)}.{draw(_LOWER)}@{draw(_LOWER)}.com",
        **words,
    }


def _message(secrets: dict[str, str]) -> str:
    """An error message that carries every secret in ``secrets``, each in its usual shape."""
    return "; ".join(
        (
            f"charged card {secrets['card']} of {secrets['email']}",
            f"connect postgres://app:{secrets['dsn_password']}@db.internal:5432/orders failed",
            f"sent Authorization: Bearer {secrets['bearer']}",
            f"X-Api-Key: {secrets['api_key_header']}",
            f"GET https://api.example.com/v1/items?api_key={secrets['api_key_query']}&page=2",
            f"login password={secrets['password_pair']}",
            f"url https://bucket.example.com/o?X-Amz-Signature={secrets['signature']}",
            f"Cookie: session={secrets['cookie']}",
        )
    )


PIPELINE = """
import json
import logging
import riprap
from riprap.connectors.memory import IterableSource
from riprap.deadletters import JsonLinesDeadLetters

MESSAGE, REASON = json.load(open("message.json"))
WHERE = {where!r}

def step(value):
    if value == 0:
        logging.getLogger("app").error("step saw: %s", MESSAGE)
        raise riprap.DataError(MESSAGE, reason=REASON)
    if WHERE == "step":
        raise RuntimeError(MESSAGE)
    return value

class FailingSink:
    name = "out"
    idempotent = True

    async def open(self):
        pass

    async def write(self, batch):
        raise RuntimeError(MESSAGE)

    async def flush(self):
        pass

    async def aclose(self):
        pass

pipeline = (
    riprap.Pipeline(
        "leaky",
        checkpoint=riprap.checkpoints.SqliteCheckpoints("ckpt.db"),
        dead_letter=JsonLinesDeadLetters("dlq.jsonl"),
        batch_size=1,
    )
    .source(IterableSource("in", [0, 1, 2]))
    .map("check", step)
    .sink(FailingSink())
)
"""


def _leaks(secrets: dict[str, str], text: str) -> list[str]:
    """The kinds of secret whose value appears in ``text``."""
    return [kind for kind, value in secrets.items() if value in text]


@pytest.mark.parametrize("log_format", ["console", "json"])
@pytest.mark.parametrize("where", ["step", "sink"])
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(secrets=_secrets())
def test_cli_run_leaks_no_secret(
    tmp_path_factory: pytest.TempPathFactory,
    where: str,
    log_format: str,
    secrets: dict[str, str],
) -> None:
    """A run stopped by a secret-laden error prints, logs and dead-letters none of the secrets."""
    cwd: Path = tmp_path_factory.mktemp("run")
    reason = f"bad_customer_{secrets['email']}"  # data in a reason: counted as "other"
    (cwd / "message.json").write_text(json.dumps([_message(secrets), reason]))
    (cwd / "p.py").write_text(textwrap.dedent(PIPELINE.format(where=where)))
    done = subprocess.run(
        [sys.executable, "-m", "riprap.cli", "-v", "--log-format", log_format, "run", "-q", "p.py"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    letters = list(read_dead_letters(cwd / "dlq.jsonl"))
    stored = "".join(letter.message + letter.traceback + letter.reason for letter in letters)
    output = done.stdout + done.stderr
    if log_format == "json":
        lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        loggers = sorted({line["logger"] for line in lines} & {"app", "riprap.dlq"})
    else:
        loggers = sorted(n for n in ("app", "riprap.dlq") if f" {n}: " in done.stderr)
    assert (1, True, True, 1) == (
        done.returncode,
        "[REDACTED:" in done.stdout,
        "Traceback (most recent call last)" in done.stdout,
        len(letters),
    )
    assert (["app", "riprap.dlq"], ["other"]) == (loggers, [x.reason for x in letters])
    assert ([], []) == (_leaks(secrets, output), _leaks(secrets, stored))


@settings(max_examples=10, deadline=None)
@given(secrets=_secrets())
def test_run_raises_a_redacted_pipeline_error(secrets: dict[str, str]) -> None:
    """The PipelineError raised from riprap.run carries no secret, and its cause is kept."""
    message = _message(secrets)

    def fail(value: int) -> int:
        raise RuntimeError(message)

    pipeline = (
        riprap.Pipeline("leaky", checkpoint=riprap.checkpoints.MemoryCheckpoints())
        .source(IterableSource("in", [1]))
        .map("fail", fail)
        .sink(MemorySink())
    )
    with pytest.raises(riprap.PipelineError) as caught:
        riprap.run(pipeline, handle_signals=False)
    assert ([], message) == (_leaks(secrets, str(caught.value)), str(caught.value.error))


@settings(max_examples=50, deadline=None)
@given(secrets=_secrets())
def test_default_redactor_removes_every_kind(secrets: dict[str, str]) -> None:
    """The default patterns remove every generated secret from the message that carries it."""
    assert [] == _leaks(secrets, Redactor().redact(_message(secrets)))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://bob:hunter2@api.example.com/v1?api_key=k1&page=2",
            "https://[REDACTED:userinfo]@api.example.com/v1?api_key=[REDACTED:secret]&page=2",
        ),
        (
            "https://api.example.com/cb#access_token=t1&state=s",
            "https://api.example.com/cb#access_token=[REDACTED:secret]&state=s",
        ),
        (
            "https://s3.example.com/o?X-Amz-Signature=abc&X-Amz-Date=20260101",
            "https://s3.example.com/o?X-Amz-Signature=[REDACTED:secret]&X-Amz-Date=20260101",
        ),
        ("https://api.example.com/v1/items?page=2", "https://api.example.com/v1/items?page=2"),
    ],
    ids=["userinfo-and-key", "fragment-token", "signature", "nothing-secret"],
)
def test_redact_url(url: str, expected: str) -> None:
    """redact_url drops userinfo and secret query values and keeps everything else."""
    assert expected == redact_url(url)


class FlakyStore:
    """A checkpoint store whose first ``failures`` saves fail with ``message``."""

    def __init__(self, message: str, failures: int) -> None:
        self.inner = riprap.checkpoints.MemoryCheckpoints()
        self.message = message
        self.failures = failures

    async def claim(self, pipeline: str, owner: str) -> riprap.checkpoints.Claim:
        return await self.inner.claim(pipeline, owner)

    async def save(self, checkpoint: riprap.checkpoints.Checkpoint) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError(self.message)
        await self.inner.save(checkpoint)

    async def load(self, pipeline: str) -> riprap.checkpoints.Checkpoint | None:
        return await self.inner.load(pipeline)

    async def aclose(self) -> None:
        await self.inner.aclose()


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secrets=_secrets())
def test_a_failed_periodic_checkpoint_logs_no_secret(
    secrets: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A store's error (it may name a DSN or a key) is logged through the redactor."""
    caplog.clear()
    clock = VirtualClock()

    async def slow(value: int) -> int:
        await clock.sleep(1.0)
        return value

    pipeline = (
        riprap.Pipeline(
            "leaky",
            checkpoint=FlakyStore(_message(secrets), failures=2),
            checkpoint_interval=1.5,
            batch_size=1,
        )
        .source(IterableSource("in", range(6)))
        .map("slow", slow)
        .sink(MemorySink())
    )
    with caplog.at_level(logging.WARNING, logger="riprap.checkpoint"):
        report = anyio.run(functools.partial(run_pipeline, pipeline, clock=clock))
    assert "completed" == report.outcome
    logged = [r.getMessage() for r in caplog.records if r.name == "riprap.checkpoint"]
    assert 2 == len(logged)
    assert all("failed (RuntimeError" in line for line in logged)
    assert [] == _leaks(secrets, "\n".join(logged))
