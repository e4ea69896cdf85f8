"""data/progress.py: rate and time left, plain lines when the output is not a terminal."""

from __future__ import annotations

import io

from data.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_with_rate_and_eta_when_not_a_terminal():
    out = io.StringIO()
    p = Progress("encode", total=4, unit="shards", stream=out, every=0.0)
    p.update(1)
    p.update(1)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("encode: 1/4 shards ") and "/s" in lines[0] and "eta " in lines[0]
    assert lines[-1].startswith("encode: 2/4 shards")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_not_a_terminal_reports_at_most_every_interval():
    out = io.StringIO()
    p = Progress("prepare: read", total=1000, stream=out, every=3600.0)
    for _ in range(1000):
        p.update()
    p.close()
    (line,) = out.getvalue().splitlines()  # only the closing line
    assert line.startswith("prepare: read: 1000/1000 tasks ")


def test_a_terminal_gets_one_line_rewritten_in_place():
    out = _Terminal()
    p = Progress("evaluate", total=2, unit="sentences", stream=out)
    p.every = 0.0
    p.update()
    p.update()
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 3
