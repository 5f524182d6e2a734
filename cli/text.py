"""Text from outside (the web, file names, settings, arguments) made safe for a terminal."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """No escape sequences or bidi overrides reach the terminal; escape Rich markup separately."""
    return _CONTROL.sub("", str(text).replace("\x1b", "␛"))
