"""Generated from protos/strata/v1 by strata.protogen; do not edit."""
