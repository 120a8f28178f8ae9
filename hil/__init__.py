"""qkd-hil: hardware-in-the-loop test benches for QKD pilot links."""

__version__ = "0.1.0"
