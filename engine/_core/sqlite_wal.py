"""Switch a SQLite connection to write-ahead logging without losing a race to another opener.

SQLite answers a journal-mode change that meets another connection's lock with
``SQLITE_BUSY`` at once, without waiting on its busy timeout: two processes
opening one new database together (the workers of one pipeline, sharing a
checkpoint store or an output table) would see "database is locked" although
a moment's wait would do.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

_SQLITE_BUSY = 5
_FIRST_WAIT = 0.001
_LONGEST_WAIT = 0.05


def use_wal(
    db: sqlite3.Connection,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """Put ``db`` in WAL mode, retrying while another connection holds a lock, up to ``timeout`` s.

    Blocking: call it where the connection is opened (a worker thread).

    Raises:
        sqlite3.Error: The change failed for another reason, or still met a
            lock after ``timeout`` seconds.
    """
    deadline = clock() + timeout
    wait = _FIRST_WAIT
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            left = deadline - clock()
            if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or left <= 0:
                raise
            sleep(min(wait, left))
            wait = min(wait * 2, _LONGEST_WAIT)
        else:
            return
