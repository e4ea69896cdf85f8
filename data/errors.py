"""The one base class for failures a user causes and can fix.

Every layer raises its own subclass (DataError, ConfigError, ...) with a message that is one line
naming the file, key, address or URI at fault. The CLI prints `tpipe: <message>` for any UserError
and exits non-zero without a traceback (the traceback is shown with `--debug`). It lives in `data/`,
the lowest layer, so that every layer above can raise it without importing upward.
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user caused (a wrong value, file, address or missing credential): one line, no traceback."""

    exit_code = 2
