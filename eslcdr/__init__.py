"""eslcdr: call detail records for FreeSWITCH, read from the Event Socket."""

__version__ = "0.1.0"
