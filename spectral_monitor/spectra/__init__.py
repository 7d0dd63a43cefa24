"""Pure numerics on tensors: eigenvalues of batches of W^T W, the power-law fit and its estimators,
intervals, reliability and per-layer metrics.
"""
