"""The zoo's error types, importable without TensorFlow.

Every error we raise on purpose carries a message that says what was wrong and where (the recipe
key, the file, the entry name). They share `SslZooError` so that the `ssl-zoo` command can print
that message alone, without a traceback, and exit with status 2; anything else is a bug and keeps
its traceback. Each also derives from the built-in type callers would expect (`ValueError`), so
`except ValueError` keeps working.
"""


class SslZooError(Exception):
    """An error whose message is complete for the user: the CLI prints it without a traceback."""


class ConfigError(SslZooError, ValueError):
    """A recipe, an override, a method/backbone parameter or a command-line argument that cannot work."""
