"""Shared plumbing every layer may import: seeds, atomic files, result envelopes, errors."""
