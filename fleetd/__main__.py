"""Allow `python -m fleetd`, the same as the `fleetd` command."""

from fleetd.cli import entry

entry()
