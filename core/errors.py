"""The error type the CLI shows as one line (no traceback) with a non-zero exit."""


class GroundworkError(Exception):
    """Something the user can fix; the message says what, where, and how."""


class InputError(GroundworkError):
    """Bad user input (empty prompt, too long, unwritable folder...)."""
