"""The `fleetd run` daemon: supervisor, signals, sd_notify and logging setup."""

from fleetd.daemon.logging import configure_logging

__all__ = ["configure_logging"]
