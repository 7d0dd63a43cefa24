"""Argument checks shared by every layer of the package."""
