"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero.

Every message names the file, video or field at fault.
"""


class EmmilError(Exception):
    """Base of all user-facing errors; the CLI turns it into `error: <message>` and exit code 2."""


class DataError(EmmilError, ValueError):
    """Unusable input data: a feature/annotation/JSON file, a video or a field in it."""


class UnsafePickleError(DataError):
    """A pickle that would build an object outside the admitted plain types; nothing was executed."""


class ConfigError(EmmilError, ValueError):
    """An unknown config key, an invalid value, an unknown dataset/variant/experiment name."""
