"""Strata worker: joins a federation, trains on local data, sends weight deltas."""
