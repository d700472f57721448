"""Assigners: each returns an ``Assignment`` (specs/conventions.md §4)."""
