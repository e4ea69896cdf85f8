"""Suite-wide hooks. One only: when TPIPE_TEST_TRACE names a file, each test's id is appended to
it as the test starts. A test that ends the pytest process itself (Ray's driver exits when its
cluster's GCS stops answering, and during a run stderr points at the run's tpipe.log) leaves no
summary; `.ci/run` then prints the last id from this file and the newest tpipe.log lines."""

import os


def pytest_runtest_logstart(nodeid, location):
    trace = os.environ.get("TPIPE_TEST_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(nodeid + "\n")
