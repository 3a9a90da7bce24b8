"""Shared test helpers: object builders and the convergence check."""
