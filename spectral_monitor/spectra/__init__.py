"""Pure numerics on tensors: eigenvalues of batches of W^T W, the power-law fit and its estimators,
intervals, reliability, per-layer metrics, spikes above the Marchenko-Pastur edge and correlation
traps of the shuffled weights.
"""
