"""Command-line entry points: thin wrappers around importable functions."""
