"""A host whose clock runs ahead, for the Python processes a test starts with this folder on
``PYTHONPATH`` (Python imports ``sitecustomize`` at start).

With ``CLOCK_AHEAD_SECONDS`` set, every read of the wall clock in the process — ``time.time``,
``datetime.now``, ``clock_gettime(CLOCK_REALTIME)``, and so Dramatiq's ``current_millis``
and the log's time stamps — is that many seconds ahead, in every thread and in the
processes it forks, as on a host whose clock is wrong. The monotonic clock is left alone, as
a wrong wall clock leaves it. (time-machine, not libfaketime: the latter's
``--exclude-monotonic`` breaks Python 3.11's ``time.sleep``.)
"""

import os
import time

_ahead = os.environ.get("CLOCK_AHEAD_SECONDS")
if _ahead:
    import time_machine

    time_machine.travel(time.time() + float(_ahead), tick=True).start()
    time.time()  # the travel's clock starts ticking from here
