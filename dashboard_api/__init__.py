"""Strata dashboard API: REST views of federations, rounds and workers, and a few admin writes (writes.py)."""
