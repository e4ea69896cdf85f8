"""Suite-wide hooks. One only: when TPIPE_TEST_TRACE names a file, each test's id is appended to it
as the test starts, and each failure (with the last line of its message) as it is reported.

A test that ends the pytest process (Ray's driver exits when its cluster's GCS stops answering) or
that leaves the terminal's descriptors pointing elsewhere leaves no summary on the terminal; this
file, opened by path each time, still says what ran and what failed, and `.ci/run` prints it.
"""

import os
import time


def _trace(line: str) -> None:
    trace = os.environ.get("TPIPE_TEST_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def pytest_runtest_logstart(nodeid, location):
    _trace(f"started {nodeid}")


def pytest_runtest_logreport(report):
    if report.failed:
        message = str(report.longrepr).strip().splitlines()[-1:] if report.longrepr else [""]
        _trace(f"FAILED ({report.when}) {report.nodeid}: {message[0][:300]}")


def pytest_sessionfinish(session, exitstatus):
    _trace(f"finished: exit status {int(exitstatus)}, {session.testsfailed} failed of {session.testscollected}")
