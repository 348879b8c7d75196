"""The one exception type memlab raises for a user's mistake."""


class ConfigError(ValueError):
    """A user-facing configuration mistake; reported as one line, never a traceback."""
