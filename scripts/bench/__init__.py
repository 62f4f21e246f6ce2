"""Benchmarks of fleetd, each beside a baseline measured in the same script.

Run them all with `python -m scripts.bench`, or name some:
`python -m scripts.bench startup exec`. BENCHMARKS.md records the results.
"""
