"""The one exception type that reaches users.

Anything a user can cause (a missing file, a malformed config, a wrong shape, a prompt that does not
fit) is raised as `HerdError` with a message that names the file, field or value and what was
expected. The CLI prints it as one line on stderr and exits with code 2; library callers can catch it.
"""


class HerdError(Exception):
    """A user-facing error: one line, naming what was wrong and what was expected."""
