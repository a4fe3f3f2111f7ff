"""Generated gRPC stubs (see strata/protogen.py)."""
