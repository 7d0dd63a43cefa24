"""Analyses during training: the worker thread, the tracker's schedule and resume, distributed
sharding, stop rules.
"""
