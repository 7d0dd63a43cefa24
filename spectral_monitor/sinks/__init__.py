"""Where reports are written: one sink per destination behind one small interface
(:mod:`~spectral_monitor.sinks.sink`) — TensorBoard (scalars, histograms, layouts, the verdict
table), Weights & Biases, MLflow, CSV files — and the figures they carry.
"""
