"""Errors a user causes. The CLI prints their message on one line and exits 2; anything
else is a bug and may show a traceback."""


class UserError(Exception):
    """Bad input from the user: a path, a config key, a corpus. The message names the thing."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used."""


class CorpusError(UserError, ValueError):
    """A corpus that cannot be read at all (missing, not in IEMOCAP layout)."""
