"""Errors a person can act on: each message names the cause and what to do."""


class PlantError(Exception):
    """A failure of the plant service with a message for the operator (exit code 1)."""

    exit_code = 1


class ConfigError(PlantError):
    """A malformed config file or option (exit code 78, EX_CONFIG: systemd does not restart)."""

    exit_code = 78


class DatabaseError(PlantError):
    """The database is unreachable, or its schema is not the one this version expects."""

    exit_code = 69  # EX_UNAVAILABLE
