"""The tokenizer's user errors: one line naming the file or the corpus at fault (data.errors.UserError)."""

from __future__ import annotations

from data.errors import UserError


class TokenizerFileError(UserError, ValueError):
    """A tokenizer file is missing, truncated or edited by hand; the message names the file and line."""


class TrainingError(UserError, ValueError):
    """The corpus cannot give the tokenizer asked for (empty, or nothing to learn from)."""
