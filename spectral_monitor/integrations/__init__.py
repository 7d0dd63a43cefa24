"""Adapters to trainers: the Lightning callback."""
