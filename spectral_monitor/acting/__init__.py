"""Acting on reliable alphas: per-layer learning-rate / weight-decay factors, the balancer
callback, pruning ratios.
"""
