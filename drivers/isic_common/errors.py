"""The error types of every package here, each with the process exit code a technician and systemd see.

Every failure that reaches the command line is one of these, so the CLI prints one clear line
instead of a traceback, and systemd can tell a configuration error (no restart) from a crash.
"""

# sysexits.h codes: systemd's RestartPreventExitStatus= lists EX_CONFIG so a bad config
# does not restart-loop.
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
EX_IOERR = 74
EX_CONFIG = 78


class StationError(Exception):
    """Base of every error the station reports to a person; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(StationError):
    """The configuration is malformed or names something that does not exist."""

    exit_code = EX_CONFIG


class ModelError(StationError):
    """The model or its manifest is missing, corrupt, or does not match what the station expects."""

    exit_code = EX_CONFIG


class BackendUnavailable(StationError):
    """An inference backend's runtime (pyACL, ONNX Runtime) is not installed or cannot start."""

    exit_code = EX_UNAVAILABLE


class DeviceError(StationError):
    """A device (spectrometer, camera) cannot be opened or stopped answering."""

    exit_code = EX_UNAVAILABLE


class StateDirError(StationError):
    """The state directory (outbox, calibration) cannot be created or written."""

    exit_code = EX_IOERR
