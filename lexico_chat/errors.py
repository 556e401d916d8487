"""User-facing errors: one clear line, no traceback."""


class LexicoError(Exception):
    """A mistake in what the user asked for (bad path, mismatched file, value out of range).

    The CLI prints ``str(err)`` on one line to stderr and exits with code 2; the TUI shows it as a
    notification. Library code raises it only for conditions a user can fix.
    """
