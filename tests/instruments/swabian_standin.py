"""A STAND-IN for the Swabian Time Tagger Python API (``Swabian.TimeTagger``), written from the
vendor's published documentation for the calls hil.instruments.swabian uses. It is not the
vendor's code and runs no hardware: it exists because nothing can create a real tagger without
one. It generates, per ``startFor``, the test signal's tags on the inputs where it is on (a
steady period) and a few tags on the others, in ``getData`` blocks of at most ``block`` events;
``inject`` adds the documented non-tag event types (1 error, 2/3 overflow begin/end, 4 missed
events with their counts) to the next block.
"""

from __future__ import annotations

import numpy as np

TEST_SIGNAL_PERIOD_PS = 1_250_000  # 800 kHz, the documented test signal's order of magnitude


class _Buffer:
    def __init__(self, ts, ch, et, missed):
        self._ts, self._ch, self._et, self._missed = ts, ch, et, missed
        self.size = len(ts)

    def getTimestamps(self):  # noqa: N802 - the vendor's names
        return self._ts

    def getChannels(self):  # noqa: N802
        return self._ch

    def getEventTypes(self):  # noqa: N802
        return self._et

    def getMissedEvents(self):  # noqa: N802
        return self._missed


class TimeTagger:
    def __init__(self, serial: str):
        self.serial = serial or "1910000ABC"
        self.levels: dict[int, float] = {}
        self.delays: dict[int, int] = {}
        self.test_signal: set[int] = set()
        self.calls: list[tuple] = []

    def getSerial(self):  # noqa: N802
        return self.serial

    def getModel(self):  # noqa: N802
        return "Time Tagger Ultra (stand-in)"

    def getChannelList(self):  # noqa: N802
        return list(range(1, 9))

    def setTriggerLevel(self, ch, v):  # noqa: N802
        self.calls.append(("setTriggerLevel", ch, v))
        self.levels[ch] = v

    def getTriggerLevel(self, ch):  # noqa: N802
        return self.levels.get(ch, 0.5)

    def setInputDelay(self, ch, ps):  # noqa: N802
        self.calls.append(("setInputDelay", ch, ps))
        self.delays[ch] = ps

    def getInputDelay(self, ch):  # noqa: N802
        return self.delays.get(ch, 0)

    def setTestSignal(self, channels, on):  # noqa: N802
        self.calls.append(("setTestSignal", list(channels), on))
        (self.test_signal.update if on else self.test_signal.difference_update)(channels)


class TimeTagStream:
    block = 1000
    inject: list[tuple[int, int]] = []  # (event type, missed count) added to the next block

    def __init__(self, tagger: TimeTagger, n_max_events: int, channels):
        self.tagger, self.n_max, self.channels = tagger, n_max_events, list(channels)
        self._pending: list[tuple] = []
        self.running = False

    def startFor(self, duration_ps):  # noqa: N802
        ts, ch = [], []
        for c in self.channels:
            if c in self.tagger.test_signal:
                t = np.arange(1000, duration_ps, TEST_SIGNAL_PERIOD_PS, dtype=np.int64)
            else:  # a few detections, spread over the duration
                t = np.linspace(500, duration_ps - 1, 7).astype(np.int64) + c
            ts.append(t)
            ch.append(np.full(len(t), c, np.int32))
            ch.append(np.full(len(t), -c, np.int32)[:1])  # one falling edge: not a tag to keep
            ts.append(t[:1] + 1)
        t = np.concatenate(ts)
        c = np.concatenate(ch)
        order = np.argsort(t, kind="stable")
        self._t, self._c = t[order], c[order]
        self.running = True

    def isRunning(self):  # noqa: N802
        return self.running

    def getData(self):  # noqa: N802
        t, c = self._t[: self.block], self._c[: self.block]
        self._t, self._c = self._t[self.block :], self._c[self.block :]
        et = np.zeros(len(t), np.uint8)
        missed = np.zeros(len(t), np.uint16)
        if TimeTagStream.inject and len(t):
            for kind, n in TimeTagStream.inject:
                t = np.append(t, t[-1])
                c = np.append(c, c[-1])
                et = np.append(et, np.uint8(kind))
                missed = np.append(missed, np.uint16(n))
            TimeTagStream.inject = []
        if not len(self._t):
            self.running = False
        return _Buffer(t, c, et, missed)

    def stop(self):
        self.running = False


def createTimeTagger(serial: str = ""):  # noqa: N802
    if serial == "absent":
        raise RuntimeError("No Time Tagger attached or already in use.")
    return TimeTagger(serial)


def createTimeTaggerNetwork(address: str):  # noqa: N802
    raise RuntimeError(f"Connection to {address} failed.")


def freeTimeTagger(tagger) -> bool:  # noqa: N802
    return True
