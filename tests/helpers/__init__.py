"""Helpers shared by test modules: models with closed-form answers, trainer helpers."""
