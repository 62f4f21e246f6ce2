"""Maintenance scripts of fleetd: benchmarks and soak tests."""
