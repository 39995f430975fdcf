"""Utilities: SLaK-style mask arithmetic and non-zero-aware complexity counting."""
