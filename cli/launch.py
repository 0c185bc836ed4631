"""Start Dramatiq's or periodiq's command line with this service's logging.

    python -m cli.launch dramatiq workers.app --processes 2 --threads 8
    python -m cli.launch periodiq workers.app

Both command lines would otherwise install their own plain-text log format first; with
the root logger already configured, Dramatiq is told ``--skip-logging`` and periodiq's
``basicConfig`` does nothing. ``reminders worker`` and ``reminders scheduler`` run this.
"""

from __future__ import annotations

import sys

from shared.config import settings_or_exit
from shared.exit_status import ExitStatus
from shared.logs import configure_logging


def main() -> None:
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    program, *arguments = sys.argv[1:]
    if program == "dramatiq":
        from dramatiq.cli import main as dramatiq_main

        sys.argv = ["dramatiq", *arguments, "--skip-logging"]
        raise SystemExit(dramatiq_main())
    if program == "periodiq":
        from periodiq import entrypoint

        from workers.scheduler import install

        install()  # a tick waits out a broker outage instead of ending the process
        sys.argv = ["periodiq", *arguments]
        entrypoint()
        return
    print(f"cli.launch: unknown program {program!r}", file=sys.stderr)
    raise SystemExit(ExitStatus.USAGE)


if __name__ == "__main__":
    main()
