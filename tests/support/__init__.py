"""Fixtures and helpers the tests share, each defined once."""
