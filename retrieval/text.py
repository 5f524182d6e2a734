"""Text from files is untrusted: strip terminal escape sequences and control characters.

A document or caption can carry ANSI/OSC sequences (colour, cursor moves, window titles,
hyperlinks, even clipboard writes on some terminals) or bidi overrides that make a line read
differently from what it holds. Ingestion cleans passages and captions with `clean_text` (they
are embedded, shown to a model and printed), and the CLI passes everything it prints through
`one_line` or `clean_text` as well, since a file *name* cannot be cleaned at ingestion.
"""

from __future__ import annotations

import re

# ESC-introduced sequences (7-bit) and their 8-bit C1 forms, removed whole so no parameter
# bytes ("[31m") are left behind.
_ESCAPES = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]?            # CSI ... final byte
    | \x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?   # OSC ... BEL or ST
    | \x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?        # DCS, SOS, PM, APC ... ST
    | \x1b[ -/]*[0-~]?                    # other ESC sequences (nF, Fp, Fe, Fs)
    | \x9b[0-?]*[ -/]*[@-~]?              # 8-bit CSI
    | [\x90\x98\x9d\x9e\x9f][^\x07\x9c]*(?:\x07|\x9c)?   # 8-bit DCS/SOS/OSC/PM/APC
    """,
    re.VERBOSE,
)
# Remaining C0 controls except tab/newline, DEL, C1, and the bidi embedding/override/isolate
# characters (U+202A-U+202E, U+2066-U+2069).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NEWLINES = re.compile(r"[\n\t\u2028\u2029\x85]+")


def clean_text(text: str) -> str:
    """Escape sequences and control characters removed; tabs and newlines kept (\\r\\n -> \\n)."""
    text = text.replace("\r\n", "\n")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def one_line(text: object, limit: int | None = None) -> str:
    """`clean_text` on one line (newlines and tabs become spaces), cut at `limit` characters:
    for file names and error messages printed to a terminal."""
    out = _NEWLINES.sub(" ", clean_text(str(text))).strip()
    if limit is not None and len(out) > limit:
        out = out[: max(0, limit - 3)] + "..."
    return out
