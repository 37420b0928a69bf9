"""Tokens, instrumentation, classification, the tracking edge and event ingest."""
