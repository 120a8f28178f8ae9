"""Instrument drivers, one module per instrument kind (PyVISA / pyserial)."""
