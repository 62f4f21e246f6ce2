"""The drop-in configuration directory: TOML settings and agent files.

Imports nothing from fleetd but `fleetd.config.model`, and nothing slow:
`fleetd once` loads the configuration on every start.
"""

from fleetd.config.durations import parse_duration
from fleetd.config.loader import ConfigError, default_conf_dir, load_config
from fleetd.config.model import Config, DaemonSettings, WorkflowSettings
from fleetd.config.secrets import MASK, is_secret, redact_globals, redact_url
from fleetd.config.state import default_state_url

__all__ = [
    "MASK",
    "Config",
    "ConfigError",
    "DaemonSettings",
    "WorkflowSettings",
    "default_conf_dir",
    "default_state_url",
    "is_secret",
    "load_config",
    "parse_duration",
    "redact_globals",
    "redact_url",
]
