"""Errors caused by the user's input (config, data, weights). Entry points print them as a short message
naming the file, the value and the fix, without a traceback."""


class UserError(Exception):
    """Base for every error the user can fix."""


class ConfigError(UserError, ValueError):
    """A config value is wrong."""


class DataError(UserError, ValueError):
    """The data (files, folders, manifests) cannot be used as they are."""


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights were asked for but are neither cached nor downloadable."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""
