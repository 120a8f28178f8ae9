"""QKD transmitter driver: the pulsed decoy-state BB84 source (command set in emulator/README).

The sifting exchange sends the detected pulse indices as a binary block and gets back, per
index, the basis, the intensity class and the bit where the source discloses it (all X-basis
bits, a sample of Z-basis bits); undisclosed key bits never leave the source. Nor does the
pattern seed: it can be set (write-only, and never logged or snapshotted) but not read.
"""

from __future__ import annotations

import numpy as np

from .base import Instrument, control, strict_bool, strict_range, to_bool

UNDISCLOSED = 255
MAX_SIFT_INDICES = 1_000_000
MAX_DIST_BITS = 1 << 21  # key bits per distillation frame (the source's DIST:FRAM bound)
MAX_PARITY_RECORDS = 65536  # ranges per DIST:PAR? message


class QKDSource(Instrument):
    """Pulsed QKD transmitter with three intensities (signal, decoy, vacuum)."""

    clock_hz = control(
        "SOUR:CLOC?",
        "SOUR:CLOC {:.6g}",
        "Control the pulse clock in Hz (float, 1e6 to 5e9).",
        validator=strict_range,
        values=(1e6, 5e9),
    )
    z_probability = control(
        "SOUR:BAS:PROB?",
        "SOUR:BAS:PROB {:.6g}",
        "Control the probability of the Z basis (float, 0 to 1).",
        validator=strict_range,
        values=(0.0, 1.0),
    )

    def _set_seed(self, seed: int) -> None:
        try:
            seed = strict_range(seed, (0, 2**63 - 1))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}.seed: {exc}") from None
        # Not through write(): its on_action hook records commands (bench log, snapshot), and
        # a recorded seed regenerates every key bit. The error names the command, not the value.
        data = (f"SOUR:SEED {int(seed):d}" + (self.session.write_termination or "")).encode()
        with self.exchange("SOUR:SEED"):
            self._io("SOUR:SEED", lambda: self._send(data))
            if self.check_errors:
                self.raise_errors("SOUR:SEED")

    seed = property(
        None,
        _set_seed,
        doc="Set the pattern seed (int, 0 to 2**63-1): write-only, the source never reports "
        "it, and it is not recorded (it would regenerate every key bit).",
    )
    sync_divider = control(
        "SOUR:SYNC:DIV?",
        "SOUR:SYNC:DIV {:d}",
        "Control the sync divider: one sync pulse every N pulses (int, 1 to 2**20).",
        validator=strict_range,
        values=(1, 2**20),
        get_process=int,
    )
    disclose_fraction = control(
        "SIFT:DISC:FRAC?",
        "SIFT:DISC:FRAC {:.6g}",
        "Control the fraction of Z-basis bits disclosed for QBER estimation (float, 0 to 1).",
        validator=strict_range,
        values=(0.0, 1.0),
    )
    output_enabled = control(
        "OUTP?",
        "OUTP {}",
        "Control the optical output (bool).",
        validator=strict_bool,
        get_process=to_bool,
        set_process=int,
    )

    @property
    def intensities(self) -> tuple[float, float, float]:
        """Control the mean photon numbers (signal, decoy, vacuum)."""
        with self.exchange("SOUR:INT?"):
            return tuple(float(self.query(f"SOUR:INT{k}?")) for k in (1, 2, 3))

    @intensities.setter
    def intensities(self, mus) -> None:
        mus = tuple(float(m) for m in mus)
        if len(mus) != 3 or not (mus[0] > mus[1] + mus[2] and mus[1] > mus[2] >= 0):
            raise ValueError(
                f"{self.name}.intensities: need mu1 > mu2 + mu3, mu2 > mu3 >= 0, got {mus}"
            )
        with self.exchange("SOUR:INT"):  # the three writes and their error check as one
            for k, m in enumerate(mus, 1):
                self.write(f"SOUR:INT{k} {m:.6g}")
            if self.check_errors:
                self.raise_errors("SOUR:INT")

    @property
    def probabilities(self) -> tuple[float, float, float]:
        """Control the probabilities of the three intensities (sum 1)."""
        with self.exchange("SOUR:INT:PROB?"):
            return tuple(float(self.query(f"SOUR:INT{k}:PROB?")) for k in (1, 2, 3))

    @probabilities.setter
    def probabilities(self, ps) -> None:
        ps = tuple(float(p) for p in ps)
        if len(ps) != 3 or min(ps) < 0 or abs(sum(ps) - 1) > 1e-9:
            raise ValueError(
                f"{self.name}.probabilities: need three values >= 0 summing to 1, got {ps}"
            )
        with self.exchange("SOUR:INT:PROB"):
            for k, p in enumerate(ps, 1):
                self.write(f"SOUR:INT{k}:PROB {p:.9g}")
            if self.check_errors:
                self.raise_errors("SOUR:INT:PROB")

    def sift(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Get (basis, intensity class, bit or 255) for each detected pulse index."""
        idx = np.ascontiguousarray(indices, dtype="<i8")
        parts = []
        for start in range(0, len(idx), MAX_SIFT_INDICES):
            chunk = idx[start : start + MAX_SIFT_INDICES]
            # the block and its answer are one exchange: a setter from another thread (a
            # plan while the monitor sifts) must not come between them on the connection
            with self.exchange("SIFT:QUER?"):
                self.write_block("SIFT:QUER?", chunk.tobytes())
                raw = self.read_block("SIFT:QUER?")
            parts.append(np.frombuffer(raw, dtype=np.uint8).reshape(3, len(chunk)))
        if not parts:
            e = np.empty(0, np.uint8)
            return e, e.copy(), e.copy()
        out = np.concatenate(parts, axis=1)
        return out[0].copy(), out[1].copy(), out[2].copy()

    # -- distillation exchange (emulator/README.md "Distillation exchange") -------------------
    # Each call is one exchange under the instrument lock; ``log`` (optional) receives every
    # payload sent ("B") and answered ("A") in the order the source records its transcript.

    def _dist_write(self, command: str, payload: bytes, log=None) -> None:
        with self.exchange(command):
            self.write_block(command, payload)
            if self.check_errors:
                self.raise_errors(command)
        if log is not None:
            log("B", payload)

    def _dist_query(self, command: str, payload: bytes, log=None) -> bytes:
        with self.exchange(command):
            self.write_block(command, payload)
            raw = self.read_block(command)
            if not raw:  # the source refused it: its error says why
                errs = self.errors()
                raise ValueError(f"{self.name}: {command} refused: {errs[0] if errs else '?'}")
        if log is not None:
            log("B", payload)
            log("A", raw)
        return raw

    def dist_frame(self, indices: np.ndarray, log=None) -> None:
        """Open a key frame: the sifted Z-basis pulse indices whose bits form the source's key."""
        idx = np.ascontiguousarray(indices, dtype="<i8")
        if not 0 < len(idx) <= MAX_DIST_BITS:
            raise ValueError(f"{self.name}.dist_frame: 1..{MAX_DIST_BITS} indices")
        self._dist_write("DIST:FRAM", idx.tobytes(), log)

    def dist_shuffle(self, perm: np.ndarray, log=None) -> None:
        self._dist_write("DIST:SHUF", np.ascontiguousarray(perm, dtype="<i4").tobytes(), log)

    def dist_parities(self, records: np.ndarray, log=None) -> np.ndarray:
        """Parities of ranges of the source's shuffled key: records (shuffle, offset,
        multiplier, lo, hi) int64, answered in one message."""
        rec = np.ascontiguousarray(records, dtype="<i8").reshape(-1, 5)
        parts = []
        for a in range(0, len(rec), MAX_PARITY_RECORDS):  # a large round: a few messages
            chunk = rec[a : a + MAX_PARITY_RECORDS]
            raw = self._dist_query("DIST:PAR?", chunk.tobytes(), log)
            if len(raw) != len(chunk):
                raise ValueError(
                    f"{self.name}: DIST:PAR? answered {len(raw)} for {len(chunk)} ranges"
                )
            parts.append(np.frombuffer(raw, np.uint8))
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)

    def dist_hash(self, points, log=None) -> np.ndarray:
        pts = np.ascontiguousarray(points, dtype="<u8")
        raw = self._dist_query("DIST:HASH?", pts.tobytes(), log)
        if len(raw) != 8 * len(pts):
            raise ValueError(f"{self.name}: DIST:HASH? answered {len(raw)} bytes")
        return np.frombuffer(raw, "<u8").astype(np.uint64)

    def dist_amplify(self, m: int, seed_bits: np.ndarray, log=None) -> None:
        payload = (
            int(m).to_bytes(8, "little")
            + np.packbits(np.asarray(seed_bits, np.uint8), bitorder="little").tobytes()
        )
        self._dist_write("DIST:PA", payload, log)

    def dist_tag(self, tag: int) -> tuple[bool, int]:
        """Send the receiver's transcript tag; get (accepted, the source's tag)."""
        raw = self._dist_query("DIST:AUTH:TAG?", int(tag).to_bytes(8, "little"))
        if len(raw) != 9:
            raise ValueError(f"{self.name}: DIST:AUTH:TAG? answered {len(raw)} bytes, not 9")
        return bool(raw[0]), int.from_bytes(raw[1:], "little")

    def dist_replenish(self, n_bytes: int) -> None:
        self._dist_write("DIST:AUTH:REPL", int(n_bytes).to_bytes(8, "little"))

    def load_auth_pool(self, key: bytes) -> None:
        """Give the source the pre-shared authentication key (write-only, never recorded)."""
        # write_block does not pass through on_action, so the key reaches no bench log
        self._dist_write("DIST:AUTH:POOL", bytes(key))

    def safe_state(self) -> None:
        """Switch the optical output off."""
        self.output_enabled = False

    def settings(self) -> dict:
        out = super().settings()
        out["intensities"] = self.intensities
        out["probabilities"] = self.probabilities
        return out
