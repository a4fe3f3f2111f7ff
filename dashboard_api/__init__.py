"""Strata dashboard API: a read-only REST view of federation status and round metrics.

It runs as its own process on the coordinator's database and never writes to it.
"""
