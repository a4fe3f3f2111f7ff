"""Strata coordinator: the grpc.aio server, round state machine, storage, checkpoints."""
