"""The one exception type for problems a user can cause and fix."""


class KdbenchError(Exception):
    """A user-fixable problem; the message names the file, line or value and the fix.

    The CLI prints it without a traceback and exits with status 2.
    """
