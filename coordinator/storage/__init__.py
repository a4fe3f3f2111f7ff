"""Strata coordinator storage: table models, engines, migrations and the store."""
