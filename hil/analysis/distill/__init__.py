"""Key distillation (pure numpy/numba, usable offline): Cascade reconciliation, universal-hash
verification, Toeplitz privacy amplification and Wegman-Carter authentication tags."""
