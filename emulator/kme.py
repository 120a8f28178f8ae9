"""An emulated pair of key management entities (KMEs) serving ETSI GS QKD 014 V1.1.1 over HTTPS
with mutual TLS on loopback, so that any SAE client (ours or not) can fetch keys as from a
vendor's KME.

What it is, and why:

- **Certificates**: :class:`PKI` makes a throwaway CA and the certificates of the two KMEs and
  of three SAEs (master at site A, slave at site B, and an outsider the CA signed but no KME
  knows) with ``cryptography``, into a temporary folder (private keys mode 0600). Each entity's
  ID is written into every field an implementation may read it from (subject CN, SAN DNS, SAN
  URI; the serial is the certificate's own), so a client can be tried with each ID mapping.
- **Server**: the standard library's ``ThreadingHTTPServer`` with an ``ssl`` context that
  requires a client certificate from the bench CA (``CERT_REQUIRED``). It is maintained with
  Python, speaks HTTP/1.1 keep-alive, and adds no dependency; one thread per connection is
  plenty for the few SAEs of a bench. The TLS handshake runs in the connection's thread (not
  in the accepting loop), so a silent or refused client cannot stall the other connections.
- **Keys**: one :class:`KeyStore` is shared by both KMEs, so the same key bytes come out of
  each. enc_keys takes keys out of the shared stock (they are gone from both KMEs' stock) and
  holds them for their slaves; dec_keys hands each to each slave once. The stock fills only
  through a :class:`KeySupply`, in link time, at the rate its ``rate_bps(link_state)`` callable
  gives, up to ``max_key_count``.
- **Behaviour** is V1.1.1's (see ``shared/reference/key-delivery.md``); ``DEVIATIONS`` are what
  real KMEs get wrong, switched on by name so that a conformance test can be shown to catch them.

Nothing here imports ``hil.instruments`` or ``hil.analysis``: the client and this server are
written separately from the standard so that one misreading does not cancel on both sides.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import http.server
import ipaddress
import json
import logging
import math
import os
import secrets
import signal
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/keys/"  # V1.1.1 clause 5.1; edition 2 moves it (kept here only)

ID_FIELDS = ("cn", "san_dns", "san_uri", "serial")
URI_PREFIX = "urn:qkd-hil:"  # an entity's SAN URI is this + its name

KME_NAMES = ("kme-a", "kme-b")
SAE_NAMES = ("sae-master", "sae-slave", "sae-outsider")

# What real KMEs get wrong (reference: "Open-source KMEs, and what they teach"); the spec-exact
# behaviour is the empty set.
DEVIATIONS = {
    "not_found_404": "unknown or already delivered key IDs answer 404 instead of 400",
    "short_200": "fewer keys than asked with 200 when the stock is short, instead of 503",
    "body_on_401": "401 answers carry a JSON body",
    "master_readback": "dec_keys by the master on its own KME returns its keys instead of 401",
}

# V1.1.1 6.5 example texts, and the texts open-source KMEs agree on for the other rules
MSG_NOT_FOUND = "one or more keys specified are not found on KME"
MSG_SIZE_MULTIPLE = "size shall be a multiple of 8"
MSG_EXT_UNSUPPORTED = "not all extension_mandatory parameters are supported"
MSG_STORE = "key data access error"

MAX_BODY_BYTES = 1 << 20  # a request body beyond this is refused before it is read
HANDSHAKE_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection silent this long is closed


# ---------------------------------------------------------------------------------------------
# certificates


@dataclasses.dataclass(frozen=True)
class Identity:
    """One entity's certificate and key files and its ID under each field."""

    name: str
    cert: Path
    key: Path
    ids: dict  # field -> ID string

    def id(self, field: str) -> str:
        return self.ids[field]


def _write_key(path: Path, key) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class PKI:
    """A throwaway CA and the certificates of the KME pair and its SAEs, in ``directory``.

    Keys are EC P-256 (fast to make and to handshake with). KME certificates are server
    certificates for ``localhost`` and 127.0.0.1 besides their ID; SAE certificates are client
    certificates. ``ca_name`` tells two PKIs apart (another CA: a foreign bench)."""

    def __init__(self, directory: str | Path, ca_name: str = "qkd-hil emulated bench CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        now = datetime.datetime.now(datetime.timezone.utc)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._not_after = now + datetime.timedelta(days=2)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        self._ca_subject = ca_subject
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_subject)
            .issuer_name(ca_subject)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_cert = self.directory / "ca.pem"
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.identities: dict[str, Identity] = {}
        for name in KME_NAMES:
            self.identities[name] = self._issue(name, server=True)
        for name in SAE_NAMES:
            self.identities[name] = self._issue(name, server=False)

    def _issue(self, name: str, server: bool) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        uri = URI_PREFIX + name
        san: list[x509.GeneralName] = [x509.DNSName(name), x509.UniformResourceIdentifier(uri)]
        if server:
            san += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        # the serial as OpenSSL prints it (and Python's getpeercert reports it): upper-case hex
        ids = {"cn": name, "san_dns": name, "san_uri": uri, "serial": f"{serial:X}"}
        return Identity(name, cert_path, key_path, ids)


def peer_id(cert: dict, field: str) -> list[str]:
    """The IDs a peer certificate (``SSLSocket.getpeercert()`` form) carries under ``field``."""
    if field == "cn":
        return [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    if field == "san_dns":
        return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    if field == "san_uri":
        return [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    if field == "serial":
        serial = cert.get("serialNumber")
        return [serial.upper().lstrip("0") or "0"] if serial else []
    raise ValueError(f"unknown ID field {field!r}; fields are {', '.join(ID_FIELDS)}")


# ---------------------------------------------------------------------------------------------
# key store and supply


@dataclasses.dataclass
class _Issued:
    """Keys handed to a master by enc_keys, held for its slaves."""

    material: bytes
    master: str
    master_kme: str
    slaves: frozenset
    pending: set


class KeyStore:
    """The stock of key shared by the pair (one pool of bytes), and the keys issued to masters
    and not yet fetched by all their slaves. Sizes are in bits."""

    def __init__(
        self,
        key_size: int = 256,
        max_key_count: int = 100_000,
        max_key_per_request: int = 128,
        min_key_size: int = 64,
        max_key_size: int = 1024,
        max_sae_id_count: int = 0,
    ):
        if key_size % 8 or not (min_key_size <= key_size <= max_key_size):
            raise ValueError(f"key_size {key_size} must be whole bytes within min..max")
        self.key_size = key_size
        self.max_key_count = max_key_count
        self.max_key_per_request = max_key_per_request
        self.min_key_size = min_key_size
        self.max_key_size = max_key_size
        self.max_sae_id_count = max_sae_id_count
        self.lock = threading.Lock()
        self._pool = bytearray()
        self._issued: dict[str, _Issued] = {}
        self.supply: KeySupply | None = None

    @property
    def capacity_bytes(self) -> int:
        return self.max_key_count * self.key_size // 8

    def stored_key_count(self) -> int:
        """Keys of ``key_size`` the stock can serve now (call with the lock held)."""
        return len(self._pool) * 8 // self.key_size

    def stored_bits(self) -> int:
        with self.lock:
            return len(self._pool) * 8

    def add(self, n_bytes: int) -> int:
        """Add up to ``n_bytes`` of fresh key (what the capacity leaves room for); returns the
        bytes added. Call with the lock held."""
        n = max(0, min(int(n_bytes), self.capacity_bytes - len(self._pool)))
        if n:
            self._pool += secrets.token_bytes(n)
        return n

    def fill(self, key_count: int) -> None:
        """Put ``key_count`` keys of ``key_size`` into the stock at once (a KME that starts
        with a stock, as after a run-in)."""
        with self.lock:
            self.add(key_count * self.key_size // 8)

    def take(self, n_bytes: int) -> bytes:
        """Remove ``n_bytes`` from the stock (call with the lock held and enough stock)."""
        out = bytes(self._pool[:n_bytes])
        del self._pool[:n_bytes]
        return out

    def pump(self) -> None:
        """Bring the stock up to date with the supply (call with the lock held)."""
        if self.supply is not None:
            self.supply.pump_locked()

    def pending_count(self) -> int:
        with self.lock:
            return len(self._issued)


class KeySupply:
    """Fills a :class:`KeyStore` in link time at ``rate_bps(link_state())`` bits per second.

    Two ways to drive it: pull (every request to the KMEs calls :meth:`pump`, which reads
    ``clock()`` and integrates the rate at the current state over the time since the last
    pump) or push (the link calls :meth:`advance_to` at each step of its clock with the state
    of that step, which is exact when the state changes between requests). The rate is in bits
    of secure key per second; fractions of a byte carry over. Key that does not fit under
    ``max_key_count`` is dropped, as a full KME drops it."""

    def __init__(
        self,
        store: KeyStore,
        rate_bps: Callable[[object], float],
        clock: Callable[[], float] = time.monotonic,
        link_state: Callable[[], object] = lambda: None,
    ):
        self.store = store
        self.rate_bps = rate_bps
        self.clock = clock
        self.link_state = link_state
        self._t_s = clock()
        self._carry_bits = 0.0
        self.added_bits = 0  # total key added to the stock (what the link produced and fit)
        store.supply = self

    def _advance(self, t_s: float, state: object) -> None:
        dt = t_s - self._t_s
        if dt <= 0:
            return
        self._t_s = t_s
        rate = float(self.rate_bps(state))
        if not rate > 0:  # also refuses NaN: nothing is produced
            return
        bits = self._carry_bits + rate * dt
        whole = int(bits // 8)
        added = self.store.add(whole)
        # a full stock drops what does not fit, including the carried fraction
        self._carry_bits = bits - 8 * whole if added == whole else 0.0
        self.added_bits += 8 * added

    def pump_locked(self) -> None:
        self._advance(self.clock(), self.link_state())

    def pump(self) -> None:
        with self.store.lock:
            self.pump_locked()

    def advance_to(self, t_s: float, state: object) -> None:
        """Push mode: the link's clock reached ``t_s`` with ``state`` over the last step."""
        with self.store.lock:
            self._advance(t_s, state)


# ---------------------------------------------------------------------------------------------
# HTTP


class _Reply(Exception):
    """A response decided while handling a request (status, JSON body or None)."""

    def __init__(self, status: int, body: dict | None = None):
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, message: str, details: list | None = None) -> _Reply:
    body: dict = {"message": message}
    if details:
        body["details"] = details
    return _Reply(status, body)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length
    server_version = "qkd-hil-kme/1"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.server.kme.name, format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        kme: KME = self.server.kme
        try:
            body = self._read_body()
            reply = kme.handle(method, self.path, body, self.connection.getpeercert())
        except _Reply as r:
            reply = r
        except Exception:  # a bug here must not leave the client waiting for ever
            log.exception("%s: error while handling %s %s", kme.name, method, self.path)
            reply = _error(503, MSG_STORE)
        self._send(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _error(400, "chunked request bodies are not accepted; send Content-Length")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _error(400, "Content-Length is not a number") from None
        if n < 0 or n > MAX_BODY_BYTES:
            self.close_connection = True
            raise _error(400, f"request body longer than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(n) if n else b""

    def _send(self, reply: _Reply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        head = [f"{self.protocol_version} {reply.status} {self.responses[reply.status][0]}"]
        head.append(f"Server: {self.server_version}")
        if data:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(data)}")
        if self.close_connection:
            head.append("Connection: close")
        # one write: headers and body in separate TLS records would wait for a delayed ACK
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        self.log_request(reply.status, len(data))


class _TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, kme: KME, context: ssl.SSLContext, host: str, port: int):
        self.kme = kme
        self.context = context
        super().__init__((host, port), _Handler)

    def finish_request(self, request, client_address) -> None:
        # the handshake runs here, in the connection's own thread (see the module docstring)
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: TLS handshake from %s refused: %s", self.kme.name, client_address, exc)
            return
        try:
            tls.settimeout(IDLE_TIMEOUT_S)
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError) as exc:
            log.debug("%s: connection from %s ended: %s", self.kme.name, client_address, exc)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        log.debug("%s: error on a connection from %s", self.kme.name, client_address)


# ---------------------------------------------------------------------------------------------
# one KME


class KME:
    """One KME of the pair: its ID, the SAEs attached to it, its peer, and the shared store."""

    def __init__(
        self,
        name: str,
        kme_id: str,
        local_saes: Iterable[str],
        store: KeyStore,
        pair: KMEPair,
        id_field: str = "cn",
    ):
        self.name = name
        self.kme_id = kme_id
        self.local_saes = frozenset(local_saes)
        self.store = store
        self.pair = pair
        self.id_field = id_field
        self.peer: KME | None = None
        self.server: _TLSServer | None = None

    # -- routing

    def handle(self, method: str, target: str, body: bytes, cert: dict | None) -> _Reply:
        caller = self._caller(cert)
        if caller is None:
            raise self._unauthorised()
        url = urllib.parse.urlsplit(target)
        if not url.path.startswith(API_PREFIX):
            raise _error(404, "no such resource")
        sae_part, _, call = url.path[len(API_PREFIX) :].partition("/")
        sae_id = urllib.parse.unquote(sae_part)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if call == "status" and method == "GET":
            if body or query:
                raise _error(400, "status takes no query and no body")
            return self.status(caller, sae_id)
        if call == "enc_keys":
            return self.enc_keys(caller, sae_id, self._key_request(method, query, body))
        if call == "dec_keys":
            return self.dec_keys(caller, sae_id, self._key_ids(method, query, body))
        if call in ("status", "enc_keys", "dec_keys"):
            raise _Reply(405)
        raise _error(404, "no such resource")

    def _caller(self, cert: dict | None) -> str | None:
        if not cert:
            return None
        for sae_id in peer_id(cert, self.id_field):
            if sae_id in self.local_saes:
                return sae_id
        return None

    def _unauthorised(self) -> _Reply:
        # V1.1.1: 401 has no body; a deviating KME sends one
        if "body_on_401" in self.pair.deviations:
            return _error(401, "unauthorized")
        return _Reply(401)

    # -- requests (V1.1.1 clauses 6.2, 6.4)

    @staticmethod
    def _json(body: bytes) -> dict:
        try:
            data = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError):
            raise _error(400, "request body is not JSON in UTF-8") from None
        if not isinstance(data, dict):
            raise _error(400, "request body is not a JSON object")
        return data

    @staticmethod
    def _int_param(query: dict, name: str) -> int | None:
        if name not in query:
            return None
        values = query[name]
        if len(values) != 1 or not values[0].isdigit():
            raise _error(400, f"{name} shall be one non-negative integer")
        return int(values[0])

    def _key_request(self, method: str, query: dict, body: bytes) -> dict:
        if method == "GET":
            if body:
                raise _error(400, "GET enc_keys takes no body")
            extra = sorted(set(query) - {"number", "size"})
            if extra:
                raise _error(400, f"GET enc_keys takes only number and size, not {extra}")
            req = {k: self._int_param(query, k) for k in ("number", "size")}
            return {k: v for k, v in req.items() if v is not None}
        if query:
            raise _error(400, "POST enc_keys takes its parameters in the body")
        req = self._json(body)
        allowed = {
            "number",
            "size",
            "additional_slave_SAE_IDs",
            "extension_mandatory",
            "extension_optional",
        }
        extra = sorted(set(req) - allowed)
        if extra:
            raise _error(400, f"unknown key request fields {extra}")
        for name in ("number", "size"):
            if name in req and (type(req[name]) is not int or req[name] < 0):
                raise _error(400, f"{name} shall be a non-negative integer")
        slaves = req.get("additional_slave_SAE_IDs", [])
        if not isinstance(slaves, list) or not all(isinstance(s, str) for s in slaves):
            raise _error(400, "additional_slave_SAE_IDs shall be an array of strings")
        for name in ("extension_mandatory", "extension_optional"):
            ext = req.get(name, [])
            if not isinstance(ext, list) or not all(isinstance(e, dict) for e in ext):
                raise _error(400, f"{name} shall be an array of objects")
        return req

    def _key_ids(self, method: str, query: dict, body: bytes) -> list[str]:
        if method == "GET":
            if body or set(query) != {"key_ID"} or len(query["key_ID"]) != 1:
                raise _error(400, "GET dec_keys takes exactly one key_ID and nothing else")
            return [query["key_ID"][0]]
        if query:
            raise _error(400, "POST dec_keys takes its key IDs in the body")
        req = self._json(body)
        extra = sorted(set(req) - {"key_IDs", "key_IDs_extension"})
        if extra:
            raise _error(400, f"unknown key IDs fields {extra}")
        ids = req.get("key_IDs")
        if not isinstance(ids, list) or not ids:
            raise _error(400, "key_IDs shall be a non-empty array")
        out = []
        for entry in ids:
            if not (isinstance(entry, dict) and isinstance(entry.get("key_ID"), str)):
                raise _error(400, "each key_IDs entry shall be an object with a key_ID string")
            if set(entry) - {"key_ID", "key_ID_extension"}:
                raise _error(400, "unknown fields in a key_IDs entry")
            out.append(entry["key_ID"])
        if len(set(out)) != len(out):
            raise _error(400, "a key_ID appears twice")
        return out

    # -- the three calls (V1.1.1 clauses 5.2, 5.3, 5.4)

    def _check_slave(self, slave: str) -> None:
        assert self.peer is not None
        if slave not in self.peer.local_saes:
            raise _error(400, f"slave SAE ID {slave!r} is not attached to the peer KME")

    def status(self, caller: str, slave: str) -> _Reply:
        self._check_slave(slave)
        s = self.store
        with s.lock:
            s.pump()
            stored = s.stored_key_count()
        return _Reply(
            200,
            {
                "source_KME_ID": self.kme_id,
                "target_KME_ID": self.peer.kme_id,
                "master_SAE_ID": caller,
                "slave_SAE_ID": slave,
                "key_size": s.key_size,
                "stored_key_count": stored,
                "max_key_count": s.max_key_count,
                "max_key_per_request": s.max_key_per_request,
                "max_key_size": s.max_key_size,
                "min_key_size": s.min_key_size,
                "max_SAE_ID_count": s.max_sae_id_count,
            },
        )

    def enc_keys(self, caller: str, slave: str, req: dict) -> _Reply:
        s = self.store
        self._check_slave(slave)
        number = req.get("number", 1)
        size = req.get("size", s.key_size)
        if number < 1 or number > s.max_key_per_request:
            raise _error(400, f"number shall be between 1 and {s.max_key_per_request}")
        if size % 8:
            raise _error(400, MSG_SIZE_MULTIPLE)
        if not s.min_key_size <= size <= s.max_key_size:
            raise _error(400, f"size shall be between {s.min_key_size} and {s.max_key_size}")
        extra = req.get("additional_slave_SAE_IDs", [])
        if len(extra) > s.max_sae_id_count:
            raise _error(400, f"at most {s.max_sae_id_count} additional_slave_SAE_IDs")
        for sae in extra:
            self._check_slave(sae)
        mandatory = req.get("extension_mandatory", [])
        if mandatory:  # this KME supports no extension
            names = sorted({k for e in mandatory for k in e})
            raise _error(400, MSG_EXT_UNSUPPORTED, [{"extension_mandatory_unsupported": names}])
        n_bytes = size // 8
        slaves = frozenset([slave, *extra])
        with s.lock:
            s.pump()
            available = len(s._pool) // n_bytes
            if available < number:
                if "short_200" not in self.pair.deviations:
                    raise _error(503, MSG_STORE, [{"stored_key_count": s.stored_key_count()}])
                number = available
            keys = []
            for _ in range(number):
                key_id = str(uuid.uuid4())
                material = s.take(n_bytes)
                s._issued[key_id] = _Issued(material, caller, self.name, slaves, set(slaves))
                keys.append({"key_ID": key_id, "key": base64.b64encode(material).decode()})
        return _Reply(200, {"keys": keys})

    def dec_keys(self, caller: str, master: str, key_ids: list[str]) -> _Reply:
        s = self.store
        readback = "master_readback" in self.pair.deviations
        with s.lock:
            records = [s._issued.get(k) for k in key_ids]
            # 401 first: keys issued to other slaves are not this caller's to see, whether or
            # not it could also have asked for IDs that do not exist (V1.1.1 5.4)
            for rec in records:
                if rec is not None and caller not in rec.slaves:
                    own = readback and caller == rec.master and rec.master_kme == self.name
                    if not own:
                        raise self._unauthorised()
            for rec in records:
                fetchable = (
                    rec is not None
                    and rec.master == master
                    and (caller in rec.pending or (readback and caller == rec.master))
                )
                if not fetchable:
                    status = 404 if "not_found_404" in self.pair.deviations else 400
                    raise _error(status, MSG_NOT_FOUND)
            keys = []
            for key_id, rec in zip(key_ids, records, strict=True):
                keys.append({"key_ID": key_id, "key": base64.b64encode(rec.material).decode()})
                if caller in rec.pending:
                    rec.pending.discard(caller)
                    if not rec.pending:
                        del s._issued[key_id]
        return _Reply(200, {"keys": keys})


# ---------------------------------------------------------------------------------------------
# the pair


def _server_context(pki: PKI, identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # V1.1.1 clause 4: TLS 1.2 or later
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(identity.cert), str(identity.key))
    return ctx


class KMEPair:
    """Two emulated KMEs (``kme_a`` at the master's site, ``kme_b`` at the slave's) sharing one
    key store, served over HTTPS with mutual TLS on loopback.

    ``rate_bps(link_state)`` gives the secure key rate the supply adds (bits/s of link time);
    ``clock`` is the link clock in seconds and ``link_state`` returns what ``rate_bps`` reads.
    The defaults (a constant 1 Mbit/s on the wall clock) stand for a healthy link until the
    pair is fed by the emulator's link model. ``pki`` reuses certificates (another CA's, to
    play a foreign bench); by default a new CA is made in a temporary folder removed by
    :meth:`stop`."""

    def __init__(
        self,
        *,
        rate_bps: Callable[[object], float] = lambda state: 1e6,
        clock: Callable[[], float] = time.monotonic,
        link_state: Callable[[], object] = lambda: None,
        initial_key_count: int = 0,
        deviations: Iterable[str] = (),
        id_field: str = "cn",
        pki: PKI | None = None,
        host: str = "127.0.0.1",
        ports: tuple[int, int] = (0, 0),
        **store_options,
    ):
        if id_field not in ID_FIELDS:
            raise ValueError(f"unknown ID field {id_field!r}; fields are {', '.join(ID_FIELDS)}")
        self._tmp = None
        if pki is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="qkd-hil-kme-")
            pki = PKI(self._tmp.name)
        self.pki = pki
        self.id_field = id_field
        self.host = host
        self._ports = ports
        self.deviations: frozenset = frozenset()
        self.set_deviations(deviations)
        self.store = KeyStore(**store_options)
        self.supply = KeySupply(self.store, rate_bps, clock, link_state)
        if initial_key_count:
            self.store.fill(initial_key_count)
        ident = pki.identities
        self.kme_a = KME(
            "kme_a",
            ident["kme-a"].id(id_field),
            [ident["sae-master"].id(id_field)],
            self.store,
            self,
            id_field,
        )
        self.kme_b = KME(
            "kme_b",
            ident["kme-b"].id(id_field),
            [ident["sae-slave"].id(id_field)],
            self.store,
            self,
            id_field,
        )
        self.kme_a.peer, self.kme_b.peer = self.kme_b, self.kme_a
        self._threads: list[threading.Thread] = []

    def set_deviations(self, deviations: Iterable[str]) -> None:
        """Select the deviation profiles (names of ``DEVIATIONS``; empty: spec-exact)."""
        chosen = frozenset(deviations)
        unknown = sorted(chosen - set(DEVIATIONS))
        if unknown:
            raise ValueError(f"unknown KME deviations {unknown}; known: {sorted(DEVIATIONS)}")
        self.deviations = chosen

    def sae_id(self, name: str) -> str:
        """The ID of SAE ``name`` (sae-master, sae-slave, sae-outsider) under the ID field."""
        return self.pki.identities[name].id(self.id_field)

    def start(self) -> KMEPair:
        for kme, port, ident in zip(
            (self.kme_a, self.kme_b),
            self._ports,
            (self.pki.identities[n] for n in KME_NAMES),
            strict=True,
        ):
            kme.server = _TLSServer(kme, _server_context(self.pki, ident), self.host, port)
            t = threading.Thread(
                target=kme.server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name=f"kme-{kme.name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        return self

    def url(self, kme: KME) -> str:
        assert kme.server is not None, "start() the pair first"
        return f"https://{self.host}:{kme.server.server_address[1]}"

    def stop(self) -> None:
        for kme in (self.kme_a, self.kme_b):
            if kme.server is not None:
                kme.server.shutdown()
                kme.server.server_close()
                kme.server = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> KMEPair:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ready_info(self) -> dict:
        """What a client needs to connect (for a ready file): per KME its base URL and KME ID,
        the CA certificate, and each SAE's ID, certificate and key paths."""
        ident = self.pki.identities
        return {
            "id_field": self.id_field,
            "ca_cert": str(self.pki.ca_cert),
            "kmes": {
                kme.name: {"url": self.url(kme), "kme_id": kme.kme_id}
                for kme in (self.kme_a, self.kme_b)
            },
            "saes": {
                name.removeprefix("sae-"): {
                    "sae_id": ident[name].id(self.id_field),
                    "cert": str(ident[name].cert),
                    "key": str(ident[name].key),
                }
                for name in SAE_NAMES
            },
        }


# ---------------------------------------------------------------------------------------------
# supply from the emulated link

QBER_ABORT = 0.11  # BB84 abort threshold (Shor and Preskill, PRL 85, 441 (2000): R > 0 below 11 %)
F_EC = 1.16  # error-correction efficiency (leak = f n H2(E)), as in Lo, Ma, Chen (2005)
PUMP_INTERVAL_S = 0.05  # the supply follows the link's state at least this often


def _h2(x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0
    return -x * math.log2(x) - (1.0 - x) * math.log2(1.0 - x)


def secure_key_rate_bps(params) -> float:
    """The emulator's own asymptotic secure key rate (bits per second) of the link in state
    ``params`` (an :class:`~hil.emulator.physics.LinkParams`), independent of ``hil.analysis``.

    GLLP with decoy states in the asymptotic limit (Gottesman, Lo, Lütkenhaus, Preskill, QIC 4,
    325 (2004); Lo, Ma, Chen, PRL 94, 230504 (2005), Eq. (1)-(3); the channel model of Ma, Qi,
    Zhao, Lo, PRA 72, 012326 (2005), Sec. II), key from Z-basis signal pulses only (efficient
    BB84), the disclosed sample removed:

        R = f_clk p_signal p_Z (1 - d) [Q1 (1 - H2(e1)) - f Q H2(E)]

    with Q, E the sifted Z detection probability and error rate of a signal pulse from the
    emulator's physics (``expected_sift_probability``, ``expected_qber``: they include the
    misalignment, dark counts and an intercept-resend eavesdropper), Y0 the same with the
    source dark, Y1 = Y0 + eta (1 - Y0) with eta = transmittance x mean efficiency x p_Z(Bob),
    Q1 = Y1 mu e^-mu, e1 = (Y0/2 + (e_mis + f_Eve/4) eta (1 - Y0)) / Y1 (a single photon
    intercepted and resent in a random basis is wrong 1/4 of the time). Zero while the fiber
    is cut, the shutter closed, the laser off or the sync lost, and when the QBER is past
    QBER_ABORT (the link aborts: no key is distilled). Dead time and afterpulsing left out."""
    from .physics import (
        channel_transmittance,
        efficiency_at,
        expected_qber,
        expected_sift_probability,
    )

    p = params
    if not (p.output_on and p.sync_enabled and p.link_connected and p.attenuator_shutter_open):
        return 0.0
    q = expected_sift_probability(p, 0, 0)
    e = expected_qber(p, 0, 0)
    if not (q > 0) or not (e <= QBER_ABORT):  # NaN (nothing sifted) aborts too
        return 0.0
    y0 = expected_sift_probability(p.replace(output_on=False), 0, 0)
    eff = sum(efficiency_at(p, j) for j in range(4)) / 4.0
    eta = channel_transmittance(p) * eff * p.p_z_bob
    y1 = y0 + eta * (1.0 - y0)
    if not y1 > 0:
        return 0.0
    mu = float(p.mu[0])
    q1 = y1 * mu * math.exp(-mu)
    e1 = min(0.5, (y0 / 2 + (p.e_mis + p.eve_fraction / 4) * eta * (1.0 - y0)) / y1)
    per_pulse = q1 * (1.0 - _h2(e1)) - F_EC * q * _h2(e)
    if not per_pulse > 0:
        return 0.0
    share = float(p.p_mu[0]) * p.p_z * (1.0 - p.disclose_fraction)
    return float(p.clock_hz) * share * per_pulse


KME_BLOCK_S = 2.0  # the emulated KMEs distil each 2 s of pulses as one block
EPS_SEC = 1e-10  # secrecy and correctness parameters of that distillation
EPS_COR = 1e-15


def finite_key_rate_bps(params, block_s: float = KME_BLOCK_S) -> float:
    """The secure key rate (bit/s) the emulated KMEs distil from the link in state ``params``
    when they process ``block_s`` seconds of pulses as one block: the finite-key bound of Lim,
    Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Eqs. (1)-(5) (three intensities,
    Hoeffding deviations delta(n) = sqrt(n/2 ln(21/eps_sec))), evaluated on the counts the
    emulator's own physics expects in the block (``expected_sift_probability``,
    ``expected_qber`` per class and basis; the disclosed sample removed from the key basis):

        l = s_Z0 + s_Z1 (1 - h(phi_Z)) - f n_Z h(E_Z) - 6 log2(21/eps_sec) - log2(2/eps_cor)

    Zero under the same conditions as :func:`secure_key_rate_bps` (cut fiber, closed shutter,
    laser off, sync lost, QBER past QBER_ABORT) and when the bound is not positive. Written
    from the paper, independently of hil.analysis.finitekey."""
    from .physics import expected_qber, expected_sift_probability

    p = params
    if not (p.output_on and p.sync_enabled and p.link_connected and p.attenuator_shutter_open):
        return 0.0
    mu = [float(m) for m in p.mu]
    if not (mu[0] > mu[1] + mu[2] and mu[1] > mu[2] >= 0):
        return 0.0  # the bound needs mu1 > mu2 + mu3, mu2 > mu3 >= 0
    pulses = float(p.clock_hz) * block_s
    n = {}  # (basis, class) -> (sifted detections, errors) expected in the block
    for basis, pb in ((0, p.p_z * (1.0 - p.disclose_fraction)), (1, 1.0 - p.p_z)):
        q = [expected_sift_probability(p, k, basis) for k in range(3)]
        # afterpulses: each detection is followed, with afterpulse_prob, by a click in a later
        # window of any class, a random bit (half of them errors once sifted); the physics'
        # expectations leave them out, the tags do not
        ap = p.afterpulse_prob * sum(p.p_mu[k] * q[k] for k in range(3))
        for k in range(3):
            e = expected_qber(p, k, basis) if q[k] > 0 else 0.0
            sift = pulses * p.p_mu[k] * pb * (q[k] + ap)
            errors = pulses * p.p_mu[k] * pb * (q[k] * e + ap / 2)
            n[basis, k] = (sift, errors)
    n_z = sum(n[0, k][0] for k in range(3))
    m_z = sum(n[0, k][1] for k in range(3))
    if not n_z > 0 or not (m_z / n_z <= QBER_ABORT):
        return 0.0
    eps1 = EPS_SEC / 21.0

    def delta(total: float) -> float:
        return math.sqrt(total / 2.0 * math.log(1.0 / eps1))

    def bounds(basis: int, which: int):
        total = sum(n[basis, k][which] for k in range(3))
        d = delta(total)
        lo = [math.exp(mu[k]) / p.p_mu[k] * (n[basis, k][which] - d) for k in range(3)]
        hi = [math.exp(mu[k]) / p.p_mu[k] * (n[basis, k][which] + d) for k in range(3)]
        return lo, hi

    tau0 = sum(p.p_mu[k] * math.exp(-mu[k]) for k in range(3))
    tau1 = sum(p.p_mu[k] * math.exp(-mu[k]) * mu[k] for k in range(3))
    m1, m2, m3 = mu

    def single_photons(basis: int) -> tuple[float, float]:
        lo, hi = bounds(basis, 0)
        s0 = max(0.0, tau0 * (m2 * lo[2] - m3 * hi[1]) / (m2 - m3))
        s1 = (
            tau1
            * m1
            * (lo[1] - hi[2] - (m2**2 - m3**2) / m1**2 * (hi[0] - s0 / tau0))
            / (m1 * (m2 - m3) - m2**2 + m3**2)
        )
        return s0, max(0.0, s1)

    s_z0, s_z1 = single_photons(0)
    _, s_x1 = single_photons(1)
    lo_m, hi_m = bounds(1, 1)
    v_x1 = tau1 * (hi_m[1] - lo_m[2]) / (m2 - m3)
    if not (s_z1 > 0 and s_x1 > 0):
        return 0.0
    ratio = min(max(v_x1 / s_x1, 1e-12), 0.5)
    a, c, d = EPS_SEC, s_z1, s_x1
    gamma = math.sqrt(
        (c + d) * (1 - ratio) * ratio / (c * d * math.log(2))
        * math.log2((c + d) / (c * d * (1 - ratio) * ratio) * 21**2 / a**2)
    )  # fmt: skip
    phi = min(0.5, ratio + gamma)
    length = (
        s_z0
        + s_z1 * (1.0 - _h2(phi))
        - F_EC * n_z * _h2(m_z / n_z)
        - 6 * math.log2(21 / EPS_SEC)
        - math.log2(2 / EPS_COR)
    )
    return max(0.0, length) / block_s


class LinkFedPair:
    """A :class:`KMEPair` fed by the emulated link (``hil emulator serve``).

    Key-plane time: the pair keeps its own clock at wall pace (seconds since start), because
    the link clock (``LINK:TIME?``) advances only while the tagger acquires, and a key-delivery
    test must run without a capture. The supply reads the link's *current* parameters (the same
    ones the instruments and faults set) and adds :func:`secure_key_rate_bps` of them over each
    interval (:func:`finite_key_rate_bps`, blocks of KME_BLOCK_S; nothing until the link has
    produced for one whole block); a thread brings it up to date every PUMP_INTERVAL_S and
    every request does too,
    so a fault (fiber cut, laser off, sync loss, an eavesdropper) stops the supply within
    PUMP_INTERVAL_S of wall time. The rate of one state is computed once (states repeat)."""

    def __init__(self, link, **pair_options):
        self.link = link
        self._t0 = time.monotonic()
        self._cache: tuple[object, float] | None = None
        self._up_since: float | None = None  # key-plane time the link began producing key
        self.pair = KMEPair(
            rate_bps=self.rate_bps,
            clock=self.now_s,
            link_state=lambda: link.params,
            **pair_options,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now_s(self) -> float:
        """Key-plane time: seconds of wall time since the pair started."""
        return time.monotonic() - self._t0

    def rate_bps(self, params) -> float:
        """The supply now: the finite-key rate of the link's state, once the link has been
        producing for a whole block (the first block's key exists only when it is complete:
        after the source comes on or the fiber back, nothing for KME_BLOCK_S)."""
        rate = self._block_rate(params)
        now = self.now_s()
        if rate <= 0:
            self._up_since = None
            return 0.0
        if self._up_since is None:
            self._up_since = now
        return rate if now - self._up_since >= KME_BLOCK_S else 0.0

    def _block_rate(self, params) -> float:
        cached = self._cache
        if cached is not None and cached[0] == params:
            return cached[1]
        rate = finite_key_rate_bps(params)
        self._cache = (params, rate)
        return rate

    def start(self) -> LinkFedPair:
        self.pair.start()
        self._thread = threading.Thread(target=self._pump, name="kme-supply", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        while not self._stop.wait(PUMP_INTERVAL_S):
            try:
                self.pair.supply.pump()
            except Exception:  # noqa: BLE001 - logged; the next pump tries again
                log.exception("KME supply pump failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.pair.stop()

    def register_control(self, control) -> None:
        """Add the KME pair's commands to the emulator's control instrument (same token):

        ``KME:DEViation "<names, comma-separated>"`` (empty: spec-exact) and ``KME:DEViation?``;
        ``KME:STORe:MAXimum <keys>`` (max_key_count) and ``?``; ``KME:STORe:CLEar`` (empty the
        stock; issued keys kept); ``KME:STORe:COUNt?`` (keys of key_size in stock);
        ``KME:RATE?`` (bit/s the link supplies now); ``KME:TIME?`` (key-plane time, s)."""
        from .scpi import Num, ScpiError, Str

        pair = self.pair

        def set_dev(s, text: str) -> None:
            names = [n.strip() for n in text.split(",") if n.strip()]
            try:
                pair.set_deviations(names)
            except ValueError as exc:
                raise ScpiError(-224, str(exc)) from None

        def set_max(s, n: float) -> None:
            with pair.store.lock:
                pair.store.pump()
                pair.store.max_key_count = int(n)
                excess = len(pair.store._pool) - pair.store.capacity_bytes
                if excess > 0:
                    del pair.store._pool[-excess:]

        def clear(s) -> None:
            with pair.store.lock:
                pair.store.pump()
                pair.store._pool.clear()

        def count(s) -> int:
            with pair.store.lock:
                pair.store.pump()
                return pair.store.stored_key_count()

        c = control.command
        c("KME:DEViation", set_dev, Str())
        c("KME:DEViation?", lambda s: '"' + ",".join(sorted(pair.deviations)) + '"')
        c("KME:STORe:MAXimum", set_max, Num(1, 10_000_000))
        c("KME:STORe:MAXimum?", lambda s: pair.store.max_key_count)
        c("KME:STORe:CLEar", clear)
        c("KME:STORe:COUNt?", count)
        c("KME:RATE?", lambda s: f"{self._block_rate(self.link.params):.6g}")
        c("KME:TIME?", lambda s: f"{self.now_s():.6f}")


def main(argv: list[str] | None = None) -> None:
    """Serve a pair stand-alone until SIGTERM/SIGINT (``python -m hil.emulator.kme``): for
    benchmarks and for trying a client by hand. Writes :meth:`KMEPair.ready_info` as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ready-file", required=True)
    p.add_argument("--rate-bps", type=float, default=1e6)
    p.add_argument("--initial-keys", type=int, default=0)
    p.add_argument("--id-field", choices=ID_FIELDS, default="cn")
    p.add_argument("--deviations", default="", help="comma-separated DEVIATIONS names")
    p.add_argument("--max-keys", type=int, default=100_000, help="max_key_count")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    rate = args.rate_bps
    pair = KMEPair(
        rate_bps=lambda state: rate,
        initial_key_count=args.initial_keys,
        id_field=args.id_field,
        deviations=[d.strip() for d in args.deviations.split(",") if d.strip()],
        max_key_count=args.max_keys,
    )
    with pair:
        tmp = Path(args.ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps(pair.ready_info()))
        tmp.replace(args.ready_file)  # atomic: a reader never sees half a file
        while not stop.wait(0.5):
            if os.getppid() == 1:  # the parent died: do not outlive it
                break


if __name__ == "__main__":
    main()
