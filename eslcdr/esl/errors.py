"""What talking to FreeSWITCH's Event Socket can fail with.

Named exceptions of the Event Socket stage, apart from the connection that
raises them (client.py) so that its helpers (liveness.py) can catch them
without importing the connection.  ``RETRYABLE`` is the one list of failures
a reconnect may cure; a refused password (``AuthenticationError``) is not one.
"""

from __future__ import annotations

from greenswitch.esl import NotConnectedError


class AuthenticationError(Exception):
    """FreeSWITCH refused the Event Socket password."""


class CommandTimeout(Exception):
    """FreeSWITCH did not answer a command within command_timeout."""


class CommandFailed(Exception):
    """FreeSWITCH answered a command with -ERR."""


# What a connection attempt can fail with and still be worth retrying.
RETRYABLE = (NotConnectedError, CommandTimeout, CommandFailed, OSError)
