"""labelassign reference: readable NumPy (float64) statements of every algorithm.

Clarity first. Each function cites the spec in ``specs/`` it implements. This package
never imports torch; ``detector`` holds the fast twins.
"""
