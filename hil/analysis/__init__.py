"""Pure numpy/numba analysis over tag arrays: no I/O, no instruments, no pytest."""
