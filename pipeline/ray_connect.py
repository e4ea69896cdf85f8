"""Joining Ray: a bounded probe of the address, then ray.init (a cluster's, or a local Ray of our own)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager

from data.errors import UserError
from data.io import redact_text
from pipeline.output import say_on_terminal


class RayUnreachable(UserError, RuntimeError):
    """The Ray cluster named by --address, ray.address or RAY_ADDRESS does not answer."""


RAY_CONNECT_TIMEOUT_S = 30.0  # a cluster that has not answered by then is not coming


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds with the address in the message when nothing listens there.

    ray.init retries an unreachable GCS for minutes inside Ray's C++ client, where neither Ctrl-C
    nor SIGTERM gets through; a plain TCP connect with a deadline answers first.
    '127.0.0.1:1' -> RayUnreachable; 'ray://head:10001' probes head:10001; 'auto' and 'local' pass.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnreachable(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://head:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = f"no answer within {timeout_s:.0f} s" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise RayUnreachable(
            f"cannot reach the Ray cluster at {address} ({reason}); start it "
            "(ray start --head) or fix --address / ray.address / RAY_ADDRESS"
        ) from None


@contextmanager
def _exit_unless_done_within(timeout_s: float, what: str):
    """End the process with one line if the block is not done in `timeout_s`, or at once on a signal.

    For ray.init on an address that accepts connections but never answers: its wait runs in Ray's
    C++ client, where Python's signal handlers get no turn (SIGTERM and Ctrl-C would wait minutes).
    The kernel still writes each signal to the wakeup fd, which a watching thread reads.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import select

    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    done = threading.Event()

    def watch() -> None:
        ready, _, _ = select.select([r], [], [], timeout_s)
        if done.is_set():
            return
        if ready:
            signum = os.read(r, 1)[0]
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            line, code = f"tpipe: interrupted ({name}) while connecting to the {what}", 128 + signum
        else:
            line, code = f"tpipe: {what} did not answer within {timeout_s:.0f} s; check the address and that the cluster is up", 2
        say_on_terminal(line)  # not into tpipe.log: the user must see why the run ended
        os._exit(code)  # the lock and sockets go with the process; nothing else is half-written here

    watcher = threading.Thread(target=watch, name="tpipe-connect-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.write(w, b"\0")  # wake the watcher, which sees `done` and returns
        watcher.join(timeout=5)
        os.close(r)
        os.close(w)


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:  # (run_pipeline has probed it: check_ray_address)
        try:
            with _exit_unless_done_within(RAY_CONNECT_TIMEOUT_S, f"Ray cluster at {address}"):
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            raise RayUnreachable(f"Ray cluster at {address}: {redact_text(str(e).splitlines()[0][:300])}") from None
        return True
    ray.init(
        address="local",  # always a Ray of our own: never a stale or foreign `ray start` cluster on this machine
        num_cpus=num_cpus,
        logging_level=logging.WARNING,
        log_to_driver=True,
        dashboard_host="127.0.0.1",  # Ray Train's state queries need the dashboard; never on 0.0.0.0
    )
    return True
