"""Plumbing for the scripts: error reporting, config printing, checkpoint lookup, result tables."""
