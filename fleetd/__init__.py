"""fleetd: the agent runtime of FleetConf, as an asyncio daemon."""

__version__ = "0.1.0"
