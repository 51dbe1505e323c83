"""Compose Apps: content verification, device store, Docker engine."""
