"""Helpers every app uses and no app owns: money arithmetic, the error base, model rows from hand-written SQL.

The bottom of the import graph: ``core`` imports only Django and the standard library, and every app may
import it.
"""
