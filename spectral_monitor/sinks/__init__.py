"""Where reports are written: TensorBoard scalars, histograms, layouts and the verdict table;
figures.
"""
