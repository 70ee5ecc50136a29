"""The one base class of the errors a user can act on.

A `UserError` says what is wrong in words the user can act on (a file, a field, a value, an unreachable
store): the CLI prints its message as one line and exits 1, in one place (`disney_train.cli`). Anything else
that escapes is a bug and keeps its traceback. Each module's own errors derive from it (and from the
built-in class they always had, so callers catching `ValueError` or `RuntimeError` still do).
"""

from __future__ import annotations


class UserError(Exception):
    """A failure the user can act on; its message is the whole story."""
