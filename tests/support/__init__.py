"""Shared test support: problems as data and helpers. No test module imports another; they import from here."""
