"""Namespace and sequence-id rules, and how request strings are echoed back in errors.

A name is 1..MAX_NAME_CHARS characters with no control characters (NUL, newline, DEL, ...), so
it is safe in logs, metric labels and file names of the journal. Error messages never echo more
than ECHO_CHARS characters of a request string (`echo`), whatever the client sent.
"""

from __future__ import annotations

import re

from kvstore_server.errors import InvalidArgument

MAX_NAME_CHARS = 256
ECHO_CHARS = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def echo(value: str) -> str:
    """repr() of value, cut to ECHO_CHARS characters with the full length noted."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def check_name(field: str, value: str) -> None:
    """Raise InvalidArgument naming `field` unless value is a valid namespace / sequence id."""
    if not value:
        raise InvalidArgument(f"{field} is empty (want 1..{MAX_NAME_CHARS} characters)")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(
            f"{field}={echo(value)} has {len(value)} characters (at most {MAX_NAME_CHARS})"
        )
    bad = _CONTROL.search(value)
    if bad is not None:
        raise InvalidArgument(
            f"{field}={echo(value)} contains the control character {bad.group()!r} at "
            f"position {bad.start()}"
        )
