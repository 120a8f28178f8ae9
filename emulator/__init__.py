"""The bench's software twin, served over real transports (TCP sockets and a pty).

Independent of hil.instruments and hil.analysis by design: shared code would let one bug cancel
on both sides of a verification."""
