"""pipeline/output.py: during a run, the libraries' stderr goes to the run's log file, tpipe's lines stay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stderr_of_python_c_and_child_processes_goes_to_the_log(tmp_path):
    code = f"""
import os, subprocess, sys, warnings, logging
from pathlib import Path
from pipeline.output import stderr_to_file
print("tpipe: before", flush=True)
with stderr_to_file(Path({str(tmp_path / "tpipe.log")!r})):
    print("tpipe: step done", flush=True)
    warnings.warn("a library warning")
    logging.getLogger("lib").warning("a library log line")
    os.write(2, b"a C++ line\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a child line\\\\n')"])
print("tpipe: one-line error", file=sys.stderr)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["tpipe: before", "tpipe: step done"]
    assert proc.stderr.splitlines() == ["tpipe: one-line error"]  # stderr is back after the run
    log = (tmp_path / "tpipe.log").read_text()
    for line in ("a library warning", "a library log line", "a C++ line", "a child line"):
        assert line in log
