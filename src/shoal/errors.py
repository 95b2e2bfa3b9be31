"""User-facing errors: each message names the problem and the fix."""

from __future__ import annotations


class ShoalError(Exception):
    """Base class for errors the CLI reports as a one-line message, not a traceback."""


class DataError(ShoalError, ValueError):
    """A data source is missing, empty or malformed."""


class ModelError(ShoalError, ValueError):
    """A model folder or name cannot be used."""


class ConfigError(ShoalError, ValueError):
    """A configuration value is out of range."""
