"""The emulator's SCPI / IEEE 488.2 core: parser semantics in process, and over a real socket
every standard error number the issue lists, the status model and the no-unrequested-output rule.

The socket tests use a raw TCP client (not pyvisa, not the drivers) so that the bytes on the wire
are exactly the ones written here.
"""

from __future__ import annotations

import select
import socket

import pytest

from hil.emulator import scpi
from hil.emulator.scpi import (
    ERROR_QUEUE_DEPTH,
    ERROR_TEXT,
    ESR_CME,
    ESR_DDE,
    ESR_EXE,
    ESR_OPC,
    ESR_PON,
    ESR_QYE,
    Bool,
    Choice,
    Num,
    ScpiDevice,
    ScpiError,
    Str,
    find_message_end,
    split_message,
)
from hil.emulator.server import Emulator

SMALL_LIMIT = 4096  # max message bytes of the test emulator, so -100 is cheap to reach


class RawClient:
    """A plain SCPI-over-TCP client: write bytes, read ``\\n``-terminated lines."""

    def __init__(self, resource: str, timeout_s: float = 5.0):
        _, host, port, _ = resource.split("::")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def query(self, message: str, term: bytes = b"\n") -> str:
        self.send(message.encode("ascii") + term)
        return self.readline().decode("ascii")

    def silent(self, wait_s: float = 0.2) -> bool:
        """True if nothing arrives within ``wait_s``."""
        if self.buf:
            return False
        ready, _, _ = select.select([self.sock], [], [], wait_s)
        return not ready

    def error(self) -> tuple[int, str]:
        code, _, text = self.query("SYST:ERR?").partition(",")
        return int(code), text

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def emu():
    e = Emulator(max_message_bytes=SMALL_LIMIT)
    e.start()
    yield e
    e.stop()


@pytest.fixture()
def client(emu):
    """A factory of fresh raw clients whose devices start with empty status."""
    opened = []

    def make(role: str) -> RawClient:
        c = RawClient(emu.resources[role])
        if role == "control":  # the control port wants the token of its ready file first
            c.send(b'SYST:AUTH "%s"\n' % emu.control_token.encode())
        c.send(b"*CLS\n")
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
    assert emu.crashes == 0


def standard_text(text: str) -> str:
    """The standard part of a quoted SYST:ERR? text (device detail follows a ';')."""
    assert text.startswith('"') and text.endswith('"'), text
    return text[1:-1].split(";", 1)[0]


# ----------------------------------------------------------------------------- in process


class Toy(ScpiDevice):
    IDN = ("Acme", "TOY", "1", "2")

    def __init__(self):
        super().__init__()
        self.log = []
        c = self.command
        r = {"suffix_range": (1, 3)}
        c("MEASure[:SCALar]:POWer?", lambda s: 1.5)
        c(
            "[SOURce#]:FREQuency",
            lambda s, v: self.log.append(("freq", s, v)),
            Num(0, 1e10, "HZ"),
            **r,
        )
        c("SOURce#:POWer", lambda s, v: self.log.append(("pow", s, v)), Num(0, 1, "W"), **r)
        c("SOURce#:POWer?", lambda s: 0.25, **r)
        c("SOURce#:STATe", lambda s, v: self.log.append(("state", s, v)), Bool(), **r)
        c(
            "SOURce#:MODE",
            lambda s, v: self.log.append(("mode", s, v)),
            Choice(("FIXed", "SWEep")),
            **r,
        )
        c(
            "SOURce#:SEED",
            lambda s, v: self.log.append(("seed", s, v)),
            Num(0, 2**63 - 1, integer=True),
        )
        c("LABel", lambda s, v: self.log.append(("label", s, v)), Str())


def run(dev: ScpiDevice, msg: str) -> str | None:
    out = dev.execute(msg.encode())
    return None if out is None else out.decode()


@pytest.mark.parametrize(
    "header",
    [
        "MEAS:POW?",
        "MEASure:POWer?",
        "measure:power?",
        "MEAS:SCAL:POW?",
        "meas:scalar:pow?",
        ":MEAS:POW?",
    ],
)
def test_short_long_and_lower_case_mnemonics_match(header):
    assert run(Toy(), header) == "+1.50000000E+00\n"


@pytest.mark.parametrize(
    "header", ["MEASU:POW?", "MEA:POW?", "MEASUREMENT:POW?", "MEAS:POWE?", "MEAS:POW"]
)
def test_other_abbreviations_are_undefined_headers(header):
    dev = Toy()
    assert run(dev, header) is None
    assert dev.errors.pop()[0] == -113


def test_unit_suffixes_convert_to_si():
    dev = Toy()
    run(dev, "FREQ 1MHZ;FREQ 1mhz;FREQ 10kHz;FREQ 2.5GHZ;FREQ 3MAHZ")
    assert [v for *_, v in dev.log] == [1e6, 1e6, 1e4, 2.5e9, 3e6]
    dev.log.clear()
    run(dev, "SOUR:POW 1e-3W;POW 5MW;POW 2uw;POW 1e-3 W")
    assert [v for *_, v in dev.log] == pytest.approx([1e-3, 5e-3, 2e-6, 1e-3])
    assert len(dev.errors) == 0


def test_suffix_errors():
    dev = Toy()
    run(dev, "SOUR:POW 1e-3V")
    run(dev, "SOUR:SEED 5W")
    assert [dev.errors.pop()[0] for _ in range(2)] == [-131, -138]


def test_numeric_suffix_defaults_to_one_and_optional_nodes():
    dev = Toy()
    run(dev, "FREQ 1;SOUR2:FREQ 2;:SOURCE3:FREQUENCY 3")
    assert dev.log == [("freq", [1], 1.0), ("freq", [2], 2.0), ("freq", [3], 3.0)]


def test_min_max_and_booleans():
    dev = Toy()
    run(dev, "SOUR:POW MIN;POW MAX;POW maximum;STAT ON;STAT off;STAT 1;STAT 0;STAT 0.7")
    assert [v for *_, v in dev.log] == [0.0, 1.0, 1.0, True, False, True, False, True]
    run(dev, "SOUR:FREQ DEF")  # no default declared
    assert dev.errors.pop()[0] == -104


def test_integers_are_exact_and_nondecimal_forms_parse():
    dev = Toy()
    run(dev, f"SOUR:SEED {2**63 - 1};SEED #HFF;SEED #Q17;SEED #B101")
    assert [v for *_, v in dev.log] == [2**63 - 1, 255, 15, 5]


def test_compound_paths_relative_root_and_common_commands_between():
    dev = Toy()
    out = run(dev, "SOUR2:POW 0.5;STAT ON;*IDN?;MODE SWE;:FREQ 7;*OPC?;SOUR2:POW?")
    assert out == "Acme,TOY,1,2;1;+2.50000000E-01\n"
    assert dev.log == [
        ("pow", [2], 0.5),
        ("state", [2], True),
        ("mode", [2], "SWEEP"),
        ("freq", [1], 7.0),
    ]


def test_relative_path_is_not_the_root():
    dev = Toy()
    run(dev, "SOUR:POW 0.5;MEAS:POW?")  # resolves to SOUR:MEAS:POW?, which does not exist
    assert dev.errors.pop()[0] == -113


def test_command_error_drops_the_rest_execution_error_does_not():
    dev = Toy()
    assert run(dev, "SOUR:POW 2;*IDN?") == "Acme,TOY,1,2\n"  # -222 then continue
    assert run(dev, "FOO;*IDN?") is None  # -113 ends the message
    assert [dev.errors.pop()[0] for _ in range(3)] == [-222, -113, 0]


def test_syntax_error_means_nothing_of_the_message_runs():
    dev = Toy()
    assert run(dev, "SOUR:POW 0.5;*IDN?;;*IDN?") is None
    assert dev.log == [] and dev.errors.pop()[0] == -102


def test_strings_with_doubled_quotes():
    dev = Toy()
    run(dev, 'LAB "say ""hi""";LAB \'it\'\'s\'')
    assert [v for *_, v in dev.log] == ['say "hi"', "it's"]


def test_error_queue_fifo_overflow_and_detail():
    q = scpi.ErrorQueue(depth=3)
    for code in (-113, -222, -102, -101, -104):
        q.push(code, 'bad "x"')
    assert [q.pop() for _ in range(4)] == [
        (-113, "Undefined header;bad 'x'"),
        (-222, "Data out of range;bad 'x'"),
        (-350, "Queue overflow"),
        (0, "No error"),
    ]
    q.push(-100, "y" * 1000)
    assert len(q.pop()[1]) == scpi.MAX_ERROR_TEXT


def test_esr_bits_per_error_class():
    assert [scpi.esr_bit(c) for c in (-102, -222, -350, 7, -410, -420)] == [
        ESR_CME, ESR_EXE, ESR_DDE, ESR_DDE, ESR_QYE, ESR_QYE,
    ]  # fmt: skip


def test_internal_handler_failure_is_reported_not_raised():
    dev = Toy()
    dev.command("BOOM", lambda s: 1 / 0)
    assert run(dev, "BOOM;*IDN?") is None
    assert dev.errors.pop() == (-300, "Device-specific error;internal ZeroDivisionError")
    assert dev.internal_errors == 1


def test_framing_only_blocks_hold_newlines():
    assert find_message_end(b"*IDN?\n*IDN?\n") == 5
    assert find_message_end(b"SIFT:QUER? #13\n\n\nX\n") == 18
    assert find_message_end(b"SIFT:QUER? #15\n\n") == -1  # waits for the block's bytes
    assert find_message_end(b"A '#13'\n") == 7  # '#' inside a string is not a block
    assert find_message_end(b"A#13\n\n\n") == 4  # nor inside a header
    assert split_message(b"A #13\n\n\n,#0\n\r")[0][1] == [b"\n\n\n", b"\n\r"]


@pytest.mark.parametrize(
    "message, code",
    [(b"A\x80", -101), (b"A ';\x07'", -101), (b"A,1", -102), (b"A 1,", -102), (b"A 'x", -151),
     (b"A #3", -102), (b"A #15ab", -102), (b"A 'x' 1", -103)],
)  # fmt: skip
def test_parser_errors(message, code):
    with pytest.raises(ScpiError) as e:
        split_message(message)
    assert e.value.code == code


# ----------------------------------------------------------------------------- over a socket

# (role, program message, error number) — every standard number a socket can reach.
REACHABLE = [
    ("attenuator", b"*IDN?\x01", -101),
    ("attenuator", b"*IDN?;;*IDN?", -102),
    ("control", b'LINK:PAR? "x" y', -103),
    ("attenuator", b'INP1:ATT "ten"', -104),
    ("attenuator", b"*RST 1", -108),
    ("attenuator", b"INP1:ATT", -109),
    ("attenuator", b"INP1:FOO 3", -113),
    ("powermeter", b"MEASU:POW?", -113),
    ("attenuator", b"INP5:ATT 3", -114),
    ("attenuator", b"INP1:ATT 1.2.3", -120),
    ("attenuator", b"INP1:ATT 1e999", -120),
    ("attenuator", b"INP1:ATT 10XB", -131),
    ("source", b"SOUR:INT1 0.5V", -138),
    ("powermeter", b"SENS:POW:UNIT W@", -141),
    ("control", b'LINK:PAR? "abc', -151),
    ("tagger", b"ACQ:MARK", -200),
    ("tagger", b"INP6:ENAB 1", -241),
    ("attenuator", b"INP1:ATT 999", -222),
    ("attenuator", b"INP1:ATT? FOO", -224),
    ("attenuator", b"INP2:ATT 3", -241),
]
ESR_OF = {1: ESR_CME, 2: ESR_EXE, 3: ESR_DDE}


@pytest.mark.parametrize("role, message, code", REACHABLE)
def test_standard_error_over_socket(client, role, message, code):
    c = client(role)
    c.send(message + b"\n")
    assert c.silent(0.05), "an erroneous setter must not answer"
    got, text = c.error()
    assert (got, standard_text(text)) == (code, ERROR_TEXT[code])
    assert int(c.query("*ESR?")) & ESR_OF[-code // 100]
    assert c.error()[0] == 0


def test_settings_conflict_over_socket(client):
    c = client("source")
    c.send(b"SOUR:INT1:PROB 0.9;:OUTP ON\n")
    assert c.error()[0] == -221
    assert c.query("OUTP?") == "0"
    c.send(b"*RST\n")
    assert c.error()[0] == 0


def test_message_too_long_is_command_error_and_the_rest_is_dropped(client):
    c = client("attenuator")
    c.send(b"INP1:ATT " + b"1" * (2 * SMALL_LIMIT) + b"\n*IDN?\n")
    assert c.query("SYST:ERR?") == "Keysight Technologies,N7764A-EMU,EMU0001,1.0"
    assert c.readline().startswith(b'-100,"Command error')
    # an oversized declared block is refused before its bytes arrive
    c.send(b"SIFT:QUER? #9999999999\n")
    code, text = c.error()
    assert code == -100 and standard_text(text) == "Command error"


def test_queue_overflow_ends_with_350_before_no_error(client):
    c = client("detectors")
    c.send(b"".join(b"BOGUS%d\n" % i for i in range(ERROR_QUEUE_DEPTH + 5)))
    assert c.query("SYST:ERR:COUN?") == str(ERROR_QUEUE_DEPTH)
    seen = [c.error()[0] for _ in range(ERROR_QUEUE_DEPTH + 1)]
    assert seen == [-113] * (ERROR_QUEUE_DEPTH - 1) + [-350, 0]
    assert int(c.query("*ESR?")) == ESR_CME | ESR_DDE


def test_common_commands(client):
    c = client("powermeter")
    fields = c.query("*IDN?").split(",")
    assert len(fields) == 4 and all(fields)
    assert c.query("*TST?") == "0"
    c.send(b"*ESE 36;*SRE 255\n")
    assert (c.query("*ESE?"), c.query("*SRE?")) == ("36", str(255 & ~0x40))
    assert c.query("*STB?") == "0"
    c.send(b"NOPE\n")  # CME (32) is enabled in ESE: STB gets error queue, ESB and MSS
    assert int(c.query("*STB?")) == 0x04 | 0x20 | 0x40
    assert c.query("*STB?;*STB?") == "100;116"  # MAV once a response waits in the message
    assert int(c.query("*ESR?")) == ESR_CME and c.query("*ESR?") == "0"
    c.send(b"*OPC\n")
    assert int(c.query("*ESR?")) == ESR_OPC
    assert c.query("SYST:ERR:COUN?") == "1"
    c.send(b"*CLS\n")
    assert c.query("SYST:ERR:COUN?;:SYST:ERR:NEXT?") == '0;0,"No error"'
    c.send(b"*WAI;*RST;*ESE 0;*SRE 0\n")
    assert c.query("*OPC?") == "1" and c.silent()


def test_power_on_sets_pon():
    dev = Toy()
    assert run(dev, "*ESR?;*ESR?") == f"{ESR_PON};0\n"


def test_crlf_and_lf_terminators_and_forms_agree(client):
    c = client("attenuator")
    c.send(b"INP1:ATT 5\r\n")
    answers = {
        c.query(q, t)
        for q in ("INP1:ATT?", "INPut1:ATTenuation?", "inp:att?")
        for t in (b"\n", b"\r\n")
    }
    assert answers == {"+5.00000000E+00"}
    assert c.error()[0] == 0


def test_attenuator_compound_units_min_max(client):
    c = client("attenuator")
    c.send(b"INP1:OFFS 0;ATT 10dB;WAV 1310nm\n")
    assert c.query("INP1:ATT?;WAV?;*OPC?;ATT? MAX;ATT? MIN;ATT? DEF;:OUTP1:STAT?") == (
        "+1.00000000E+01;+1.31000000E-06;1;+6.00000000E+01;+0.00000000E+00;+0.00000000E+00;0"
    )
    c.send(b"INP1:ATT MAX;ATT?\n")
    assert c.readline() == b"+6.00000000E+01"
    c.send(b"INP1:ATT 5;OUTP1:STAT 1\n")  # relative: INP1:OUTP1:STAT does not exist
    assert c.error()[0] == -113
    c.send(b"*RST\n")
    assert c.error()[0] == 0


def test_no_unrequested_output(client):
    for role in ("attenuator", "source", "detectors", "tagger", "powermeter", "control"):
        c = client(role)
        c.send(b"*RST\nINP1:ATT 999\nNOPE?\n*OPC\n\r\n \n")
        assert c.silent(0.3), role


def test_block_digits_inside_a_string_are_not_a_block(client):
    c = client("control")
    c.send(b'LINK:PAR? "a #9999999999')  # the rest of the message comes in a later segment
    assert c.silent(0.1)
    c.send(b'"\n')
    assert c.error() == (-224, "\"Illegal parameter value;no link parameter 'a #9999999999'\"")
