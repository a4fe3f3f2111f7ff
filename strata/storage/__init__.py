"""The storage contract between the services: table models, engines, migrations and token hashing.

The coordinator writes the federation's rows (coordinator/store.py); the dashboard API reads them and makes
its few administrative writes (dashboard_api/); neither owns the schema alone.
"""
