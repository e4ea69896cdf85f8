"""What `tpipe run` shows on the terminal: tpipe's own lines; the libraries' output goes to a log file.

Ray (its start-up warnings, worker errors relayed to the driver), MLflow, Lightning and Python
warnings all write to file descriptor 2, in this process and in the processes it starts. During a
run that descriptor points at `tpipe.log` in the run folder, so the terminal (or a Ray job log)
keeps tpipe's progress and results (Printer: a line per step, a closing table); `tpipe --verbose run`
leaves it on the terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data.io import redact_text

LOG_FILE = "tpipe.log"
_terminal: list[int] = []  # the stderr descriptors that stderr_to_file set aside, innermost last


def say_on_terminal(line: str) -> None:
    """Write one line where the user sees it: the real stderr, also while stderr_to_file is on
    (for a last line before os._exit, when no `finally` will restore the descriptor)."""
    sys.stderr.flush()
    os.write(_terminal[-1] if _terminal else 2, (line + "\n").encode())


@contextmanager
def stderr_to_file(path: Path) -> Iterator[Path]:
    """Point file descriptor 2 (this process's stderr, inherited by processes started meanwhile) at
    `path`, appended to, and restore it on exit. The descriptor itself moves, so output written
    by C++ (Ray's core worker) and by child processes is caught too, not only Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 2)
    _terminal.append(saved)
    try:
        yield path
    finally:
        sys.stderr.flush()
        _terminal.remove(saved)
        os.dup2(saved, 2)
        os.close(saved)


class Printer:
    """Terminal progress: which step runs, how long each took, and a closing table."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=False, quiet=quiet, highlight=False)

    def _print(self, text: str) -> None:
        self.console.print(redact_text(text))  # every line: a URI's password never reaches the terminal

    def line(self, text: str) -> None:
        self._print(f"[dim]{text}[/dim]")

    def event(self, event: str, step: Any, info: dict[str, Any]) -> None:
        if event == "start":
            self._print(f"[bold cyan]▶ {step.name}[/bold cyan]  {step.description}  [dim]({info['key']})[/dim]")
        elif event == "cached":
            self._print(f"[green]✓ {step.name}[/green]  reused [dim]{info['out_dir']}[/dim]")
        elif event == "done":
            self._print(f"[green]✓ {step.name}[/green]  {info['seconds']:.1f}s  [dim]{_short(info['summary'])}[/dim]")

    def summary(self, s: dict[str, Any], ui_command: str) -> None:
        from rich.table import Table

        table = Table(title="tpipe run", show_header=True)
        table.add_column("step")
        table.add_column("state")
        table.add_column("seconds", justify="right")
        for name, st in s["steps"].items():
            table.add_row(name, "reused" if st["cached"] else "ran", f"{st['seconds']:.1f}")
        self.console.print(table)
        ev = s.get("evaluation")
        if ev:
            t = Table(title=f"test set ({ev['n_sentences']} sentences)")
            for col in ("", "BLEU", "chrF", "TER", "exact match %"):
                t.add_column(col, justify="right")
            for label, r in (("candidate " + ev["model"], ev["candidate"]), ("@champion", ev["champion"]), ("copy source (baseline)", ev["baseline_copy"])):
                t.add_row(label, f"{r['bleu']:.1f}", f"{r['chrf']:.1f}", f"{r['ter']:.1f}", f"{r['exact_match']:.1f}")
            self.console.print(t)
            self._print(f"promotion: {ev['promotion']}")
            self._print(f"[dim]sacreBLEU {ev['signature']['bleu']}[/dim]")
        self._print(f"total {s['wall_seconds']:.1f}s; run folder {s['run_dir']}")
        self._print(f"open the MLflow UI:  [bold]tpipe ui[/bold]   (or: {ui_command})")


def _short(summary: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in summary.items() if k not in ("samples", "signature")}, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."
