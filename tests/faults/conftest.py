"""Fault injection: launch's guarantees under hostile parents, children, files and signals.

Every test here runs under both backends and, where the start method matters, under
every start method through the ``start_method`` fixture (both from tests/conftest.py).
"""
