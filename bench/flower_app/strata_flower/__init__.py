"""The reference workload on Flower (bench/flower.py runs it)."""
