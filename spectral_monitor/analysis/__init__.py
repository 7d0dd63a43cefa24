"""One analysis of a model: options and config, the float32 snapshot, ``analyze`` and the records
it returns (report, history).
"""
