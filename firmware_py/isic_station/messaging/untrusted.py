"""Text that came from outside (MQTT payloads, lot and sample ids, file contents) made safe to show.

A value someone else chose must not be able to forge a log line (a newline followed by a fake
record), drive a terminal (ANSI escapes), truncate a journald field (NUL) or flood a log and an
error reply (a 10 MB id). `escape_control` writes every control character - C0, DEL, C1 and the
Unicode line/paragraph separators - as a visible backslash escape; `excerpt` also cuts the text
to a short head and says how much was left out.
"""

import re

# C0 controls, DEL, C1 controls and the Unicode line breaks a terminal or viewer might honour.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b", "\x00": "\\x00"}

EXCERPT_CHARS = 80


def _escape_one(match: "re.Match[str]") -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """`text` with each control character replaced by its backslash escape (printable text unchanged)."""
    return _CONTROL.sub(_escape_one, text)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `value` (str, bytes or anything with str()), escaped, with a
    note of how many characters were cut."""
    if isinstance(value, (bytes, bytearray)):
        head = bytes(value[: limit * 4]).decode("utf-8", errors="replace")
        total = len(value)
        unit = "bytes"
    else:
        text = str(value)
        head, total, unit = text, len(text), "characters"
    if total > limit:
        return f"{escape_control(head[:limit])}... ({total} {unit} in all)"
    return escape_control(head)
