"""How the service's commands end: one table of exit statuses, those of BSD's ``sysexits.h``.

A script that runs ``reminders`` (or a supervisor that starts a Procfile process) can tell
from the status alone what kind of failure it was and whether trying again may help,
without reading the message. Every ``reminders`` command, and every process that stops at
start on a bad configuration, ends with one of these; README.md ("Exit statuses") shows
the same table to users.
"""

from __future__ import annotations

import os
from enum import IntEnum


class ExitStatus(IntEnum):
    """Each status and the failures it stands for."""

    OK = os.EX_OK  # 0
    # The command line is wrong: an unknown command or option, a missing or malformed
    # argument (a message ID prefix of fewer than 8 hex digits, a bad user name), an
    # action that needs a confirmation it was not given.
    USAGE = os.EX_USAGE  # 64
    # The argument is well-formed but the data refuse it: a user name that is taken, a
    # prefix that matches several dead letters, a dead letter with nothing to send.
    DATA = os.EX_DATAERR  # 65
    # What the command names or needs does not exist: no such dead letter or user, no
    # database (or no tables in it: run ``reminders db upgrade``).
    NOT_FOUND = os.EX_NOINPUT  # 66
    # A service the command needs does not answer: the database, the Redis server (also
    # when the ``reminders dev`` that runs the embedded one is stopped), a program it runs
    # that is not installed.
    UNAVAILABLE = os.EX_UNAVAILABLE  # 69
    # Something broke that the user did not cause: a bug (its traceback is printed), or a
    # process of ``reminders dev`` that exited on its own or an API that never answered.
    SOFTWARE = os.EX_SOFTWARE  # 70
    # Busy for now, try again later: ``reminders dev`` is still starting, another ``dev``
    # holds the data directory, or the port is taken.
    TRY_AGAIN = os.EX_TEMPFAIL  # 75
    # The configuration is wrong: a bad environment variable, or a data directory (or
    # ``DATABASE_URL`` folder) that cannot be used.
    CONFIG = os.EX_CONFIG  # 78
