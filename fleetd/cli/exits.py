"""Exit statuses of every fleetd command."""

# Every run ended committed, rolled back, skipped, locked, done or pretend.
EXIT_OK = 0
# A run ended in error, or a record was invalid.
EXIT_FAILURE = 1
# A configuration error (TOML or agent file) or bad usage.
EXIT_USAGE = 2
