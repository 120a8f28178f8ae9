"""An ETSI GS QKD 014 V1.1.1 SAE client: fetch keys from a key management entity (KME) over
HTTPS with mutual TLS, and hold every answer to the standard.

    kme = KMEClient("https://kme-a.lab:8443", kme_id="KME-A", sae_id="SAE-1",
                    cert="sae1.pem", key="sae1.key", ca="lab-ca.pem", name="kme_a")
    keys = kme.enc_keys("SAE-2", number=4, size=256)      # as master, on its own KME
    same = kme_b.dec_keys("SAE-1", [k.key_ID for k in keys])  # as slave, with the master's ID

Transport: urllib3 (the HTTP library under ``requests``) with one pool of keep-alive
connections per KME. It is used directly because it reads no environment: ``requests`` lets
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace a session's ``verify=`` (this machine sets
both), and httpx costs about twice as much per request. Only the CA file given is trusted
(loaded alone into the TLS context, never the system store). Every new connection confirms
the KME ID from the KME's certificate (subject CN, SAN DNS, SAN URI or serial: ``id_field``)
before a request is sent on it; host-name checking can be turned off for KMEs whose
certificates do not name their address, the CA chain and the KME ID still checked.

Every answer is checked: status code one of 200/400/401/503 (V1.1.1 defines no other), a JSON
body in exactly the format of clause 6 on 200/400/503 and none on 401, Base64 keys (RFC 4648),
as many keys as asked, of the size asked, with the IDs asked. Anything else raises
:class:`KMEError`, one line naming the KME, the call, the HTTP status and the rule; a KME's own
refusal (a conformant 400/401/503) raises it too, with ``kind == "refused"``.

Keys are :class:`Key` objects holding their bytes in memory only: their repr and str show the
key ID and size, they refuse to be pickled, and no key byte is logged or put in an error text.
Each request ends by a deadline (``timeout_s``), also against a KME that answers byte by byte.

Where V1.1.1 puts things (the path prefix, which SAE ID goes into the path, GET forms) is in
:class:`ApiV1` alone: the announced edition 2 moves them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import heapq
import hmac
import itertools
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

log = logging.getLogger(__name__)

ID_FIELDS = ("cn", "san_dns", "san_uri", "serial")
STATUS_CODES = (200, 400, 401, 503)  # V1.1.1 5.2-5.4: the only codes defined for every call
MAX_ANSWER_BYTES = 4 << 20  # an answer longer than this is refused, not read to the end
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_CLAUSE = {"status": "5.2", "enc_keys": "5.3", "dec_keys": "5.4"}


class KMEError(Exception):
    """A KME call that did not deliver: one line naming the KME, the call, the HTTP status
    (``None`` when none arrived) and the rule. ``kind`` is ``"refused"`` for a conformant
    refusal (400, 401, 503 as the standard has them), ``"violation"`` for an answer that
    breaks V1.1.1, ``"identity"`` when the KME's certificate does not carry its KME ID, and
    ``"transport"`` for TLS, connection and deadline failures. ``message`` is the KME's own
    error message (400/503), if any."""

    def __init__(
        self,
        kme: str,
        call: str,
        status: int | None,
        rule: str,
        kind: str,
        message: str | None = None,
    ):
        self.kme, self.call, self.status, self.rule = kme, call, status, rule
        self.kind, self.message = kind, message
        shown = f"HTTP {status}" if status is not None else "no HTTP status"
        super().__init__(_one_line(f"{kme}: {call}: {shown}: {rule}"))


def _one_line(text: str, limit: int = 600) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Key:
    """A key delivered by a KME: ``key_ID`` and ``size`` (bits) are printable, ``material``
    (bytes) is not: repr/str show the ID and size only, pickling is refused (a key is not to
    reach a file or another process by accident). Equal keys have the same ID and bytes
    (compared in constant time)."""

    __slots__ = ("key_ID", "_material", "key_ID_extension", "key_extension")

    def __init__(
        self,
        key_ID: str,  # noqa: N803 (the standard's name)
        material: bytes,
        key_ID_extension: dict | None = None,
        key_extension: dict | None = None,
    ):
        self.key_ID = key_ID
        self._material = bytes(material)
        self.key_ID_extension = key_ID_extension
        self.key_extension = key_extension

    @property
    def material(self) -> bytes:
        """Get the key's bytes (keep them in memory)."""
        return self._material

    @property
    def size(self) -> int:
        """Get the key's size in bits."""
        return 8 * len(self._material)

    def __repr__(self) -> str:
        return f"Key(key_ID={self.key_ID!r}, size={self.size})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return self.key_ID == other.key_ID and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash(self.key_ID)

    def __reduce__(self):
        raise TypeError("a Key is not pickled: key bytes stay in this process's memory")


@dataclasses.dataclass(frozen=True)
class Status:
    """A KME's answer to Get status (V1.1.1 6.1); sizes in bits."""

    source_KME_ID: str  # noqa: N815 (the standard's names, as on the wire)
    target_KME_ID: str  # noqa: N815
    master_SAE_ID: str  # noqa: N815
    slave_SAE_ID: str  # noqa: N815
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int  # noqa: N815
    status_extension: dict | None = None


_STATUS_STR = ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID")
_STATUS_INT = (
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
)


@dataclasses.dataclass(frozen=True)
class Request:
    """One API request as it goes on the wire: method, path (under the base URL), and either
    query fields (GET) or a JSON body (POST)."""

    method: str
    path: str
    fields: dict | None = None
    body: dict | None = None


class ApiV1:
    """Where ETSI GS QKD 014 V1.1.1 puts things: the path prefix, the SAE ID in each path
    (enc_keys and status: the slave's; dec_keys: the master's), and the GET forms (enc_keys
    with at most ``number`` and ``size``; dec_keys with one ``key_ID``). The announced edition
    2 moves the prefix, drops GET and puts the SAE IDs into the body: a class with this
    interface is all it takes."""

    prefix = "/api/v1/keys"

    def _path(self, sae_id: str, call: str) -> str:
        return f"{self.prefix}/{urllib.parse.quote(sae_id, safe='')}/{call}"

    def status(self, slave_sae_id: str) -> Request:
        return Request("GET", self._path(slave_sae_id, "status"))

    def enc_keys(
        self,
        slave_sae_id: str,
        number: int | None = None,
        size: int | None = None,
        additional_slave_sae_ids: Sequence[str] = (),
        extension_mandatory: Sequence[dict] = (),
        extension_optional: Sequence[dict] = (),
        method: str = "POST",
    ) -> Request:
        path = self._path(slave_sae_id, "enc_keys")
        items = {"number": number, "size": size}
        items = {k: v for k, v in items.items() if v is not None}
        if method == "GET":
            if additional_slave_sae_ids or extension_mandatory or extension_optional:
                raise ValueError(
                    "enc_keys GET carries only number and size; use POST for additional "
                    "slaves and extensions (V1.1.1 5.3)"
                )
            return Request("GET", path, fields=items or None)
        if method != "POST":
            raise ValueError(f"enc_keys method is GET or POST, not {method!r}")
        body = dict(items)
        if additional_slave_sae_ids:
            body["additional_slave_SAE_IDs"] = list(additional_slave_sae_ids)
        if extension_mandatory:
            body["extension_mandatory"] = [dict(e) for e in extension_mandatory]
        if extension_optional:
            body["extension_optional"] = [dict(e) for e in extension_optional]
        return Request("POST", path, body=body)

    def dec_keys(
        self,
        master_sae_id: str,
        key_ids: Sequence[str],
        method: str = "POST",
    ) -> Request:
        path = self._path(master_sae_id, "dec_keys")
        if method == "GET":
            if len(key_ids) != 1:
                raise ValueError("dec_keys GET carries exactly one key_ID (V1.1.1 5.4)")
            return Request("GET", path, fields={"key_ID": key_ids[0]})
        if method != "POST":
            raise ValueError(f"dec_keys method is GET or POST, not {method!r}")
        return Request("POST", path, body={"key_IDs": [{"key_ID": k} for k in key_ids]})


# ---------------------------------------------------------------------------------------------
# deadlines: one watchdog thread shuts down the socket of a request past its deadline, so that
# a KME trickling its answer a byte at a time (each read inside the read timeout) still ends


class _Watchdog:
    def __init__(self):
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, HTTPSConnection]] = []
        self._live: set[int] = set()
        self._fired: set[int] = set()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, conn: HTTPSConnection) -> int:
        with self._cv:
            token = next(self._seq)
            heapq.heappush(self._heap, (deadline, token, conn))
            self._live.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kme-deadline", daemon=True)
                self._thread.start()
            if self._heap[0][1] == token:
                self._cv.notify()
            return token

    def disarm(self, token: int) -> bool:
        """End the watch of ``token``; True if its deadline had passed and it struck."""
        with self._cv:
            self._live.discard(token)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # disarmed: drop
                if not self._heap:
                    self._cv.wait()
                    continue
                deadline, token, conn = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
                self._fired.add(token)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
                except OSError:
                    pass


_WATCHDOG = _Watchdog()
_CALL = threading.local()  # the deadline and armed tokens of this thread's request


class _KMEConnection(HTTPSConnection):
    """A connection that confirms the KME ID from the certificate before it is used, and puts
    itself under the current request's deadline."""

    kme_check = None  # set on a per-client subclass: callable(peer cert dict) -> None

    def _arm(self) -> None:
        deadline = getattr(_CALL, "deadline", None)
        if deadline is not None and self not in _CALL.armed:
            _CALL.armed[self] = _WATCHDOG.arm(deadline, self)

    def connect(self) -> None:
        self._arm()
        super().connect()
        check = type(self).kme_check
        if check is not None:
            try:
                check(self.sock.getpeercert())
            except BaseException:
                self.close()
                raise

    def request(self, *args, **kwargs):
        self._arm()
        return super().request(*args, **kwargs)


def _peer_ids(cert: dict, field: str) -> list[str]:
    """The IDs a peer certificate (``SSLSocket.getpeercert()``) carries under ``field``."""
    if field == "cn":
        return [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    if field in ("san_dns", "san_uri"):
        kind = "DNS" if field == "san_dns" else "URI"
        return [v for k, v in cert.get("subjectAltName", ()) if k == kind]
    if field == "serial":
        serial = cert.get("serialNumber")
        return [_serial(serial)] if serial else []
    raise ValueError(f"unknown ID field {field!r}; fields are {', '.join(ID_FIELDS)}")


def _serial(text: str) -> str:
    """A certificate serial in one spelling: hex digits, upper case, no colons or leading 0."""
    return text.replace(":", "").upper().lstrip("0") or "0"


class KMEClient:
    """An SAE's client of one KME (ETSI GS QKD 014 V1.1.1).

    ``base_url``: ``https://host[:port][/path]``; ``kme_id``: the KME ID its certificate must
    carry under ``id_field`` (cn, san_dns, san_uri, serial: hex); ``sae_id``: this SAE's ID
    (what the KME reads from ``cert``); ``cert``/``key``: this SAE's client certificate and
    private key (PEM); ``ca``: the only CA trusted for the KME's certificate (PEM);
    ``timeout_s``: deadline of each request, connection and TLS handshake included;
    ``name``: how errors name this KME (the bench role)."""

    def __init__(
        self,
        base_url: str,
        kme_id: str,
        sae_id: str,
        cert: str | Path,
        key: str | Path,
        ca: str | Path,
        *,
        id_field: str = "cn",
        timeout_s: float = 10.0,
        connect_timeout_s: float | None = None,
        check_hostname: bool = True,
        name: str = "kme",
        api: ApiV1 | None = None,
        max_connections: int = 4,
    ):
        if id_field not in ID_FIELDS:
            raise ValueError(f"{name}: unknown id_field {id_field!r}; one of {ID_FIELDS}")
        if not timeout_s > 0:
            raise ValueError(f"{name}: timeout_s must be > 0, not {timeout_s!r}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"{name}: base URL {base_url!r} is not https://host[:port][/path]")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.kme_id = kme_id
        self.sae_id = sae_id
        self.id_field = id_field
        self.timeout_s = float(timeout_s)
        self.api = api or ApiV1()
        self._base_path = url.path.rstrip("/")
        self._label = f"{name} (KME {kme_id!r} at {self.base_url})"
        self._key_size: dict[str, int] = {}  # slave SAE ID -> key_size from its last status

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain; no CA loaded yet
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # V1.1.1: TLS 1.2 or later
        try:
            ctx.load_verify_locations(cafile=str(ca))  # this CA alone, never the system store
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                _one_line(f"{name}: cannot load CA {ca} / certificate {cert} / key {key}: {exc}")
            ) from None
        ctx.check_hostname = check_hostname

        expected = _serial(kme_id) if id_field == "serial" else kme_id
        label = self._label

        def kme_check(peer: dict) -> None:
            found = _peer_ids(peer or {}, id_field)
            if expected not in found:
                raise KMEError(
                    label,
                    "TLS handshake",
                    None,
                    f"the KME certificate's {id_field} is {found!r}, not the KME ID {kme_id!r}",
                    "identity",
                )

        conn_cls = type(
            "_KMEConnectionFor", (_KMEConnection,), {"kme_check": staticmethod(kme_check)}
        )
        connect_s = min(self.timeout_s, connect_timeout_s or self.timeout_s)
        self._pool = HTTPSConnectionPool(
            url.hostname,
            url.port or 443,
            maxsize=max_connections,
            block=False,
            retries=False,  # enc_keys and dec_keys consume keys: never sent twice
            timeout=urllib3.Timeout(connect=connect_s, read=self.timeout_s),
            ssl_context=ctx,
            assert_hostname=None if check_hostname else False,
        )
        self._pool.ConnectionCls = conn_cls

    # -- the three calls

    def status(self, slave_sae_id: str) -> Status:
        """Get the status of the keys this SAE shares with ``slave_sae_id`` (V1.1.1 5.2)."""
        what, data = self._call("status", self.api.status(slave_sae_id))
        st = self._status(what, data)
        for field, want in (
            ("source_KME_ID", self.kme_id),
            ("master_SAE_ID", self.sae_id),
            ("slave_SAE_ID", slave_sae_id),
        ):
            if getattr(st, field) != want:
                got = getattr(st, field)
                self._violation(what, 200, f"{field} is {got!r}, not {want!r} (6.1)")
        self._key_size[slave_sae_id] = st.key_size
        return st

    def enc_keys(
        self,
        slave_sae_id: str,
        number: int | None = None,
        size: int | None = None,
        *,
        additional_slave_sae_ids: Sequence[str] = (),
        extension_mandatory: Sequence[dict] = (),
        extension_optional: Sequence[dict] = (),
        method: str = "POST",
    ) -> list[Key]:
        """Get ``number`` keys of ``size`` bits (the KME's defaults when None) for
        ``slave_sae_id``, as their master (V1.1.1 5.3). ``method="GET"`` sends the GET form
        (number and size only)."""
        req = self.api.enc_keys(
            slave_sae_id,
            number,
            size,
            additional_slave_sae_ids,
            extension_mandatory,
            extension_optional,
            method,
        )
        what, data = self._call("enc_keys", req)
        keys = self._container(what, data)
        want = 1 if number is None else number
        if len(keys) != want:
            self._violation(what, 200, f"{len(keys)} keys delivered, {want} asked (5.3)")
        want_size = size if size is not None else self._key_size.get(slave_sae_id)
        for i, k in enumerate(keys):
            if want_size is not None and k.size != want_size:
                what = "asked" if size is not None else "the KME's key_size"
                self._violation(what, 200, f"keys[{i}] has {k.size} bits, {want_size} {what} (5.3)")
            if size is None and k.size != keys[0].size:
                self._violation(what, 200, f"keys[{i}] differs in size from keys[0] (5.3)")
        return keys

    def dec_keys(
        self, master_sae_id: str, key_ids: Iterable[str], *, method: str = "POST"
    ) -> list[Key]:
        """Get the keys ``key_ids`` that ``master_sae_id`` was given for this SAE, as their
        slave (V1.1.1 5.4); the answer holds exactly those IDs, in that order.
        ``method="GET"`` sends the one-ID GET form."""
        ids = list(key_ids)
        if not ids:
            raise ValueError(f"{self.name}: dec_keys needs at least one key ID")
        what, data = self._call("dec_keys", self.api.dec_keys(master_sae_id, ids, method))
        keys = self._container(what, data)
        if master_sae_id == self.sae_id:
            # the master asking for its own keys back: only their slave may (5.4: 401)
            self._violation(
                what,
                200,
                "keys delivered to their own master; only their slave may have them, "
                "others get 401 (5.4)",
            )
        got = [k.key_ID for k in keys]
        if sorted(got) != sorted(ids):
            missing = sorted(set(ids) - set(got))
            extra = sorted(set(got) - set(ids))
            self._violation(
                what,
                200,
                f"key IDs delivered differ from those asked (missing {missing}, "
                f"not asked {extra}) (5.4)",
            )
        by_id = {k.key_ID: k for k in keys}
        return [by_id[i] for i in ids]

    def close(self) -> None:
        """Close the connections to the KME."""
        self._pool.close()

    def __enter__(self) -> KMEClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KMEClient({self._label}, SAE {self.sae_id!r})"

    # -- transport and answer checks

    def _violation(self, call: str, status: int | None, rule: str) -> None:
        raise KMEError(self._label, call, status, f"V1.1.1 {rule}", "violation")

    def _call(self, call: str, req: Request):
        """Send ``req`` by the deadline; return (what was sent, the parsed JSON of a 200), or
        raise :class:`KMEError`."""
        url = self._base_path + req.path
        headers = {"Accept": "application/json"}
        body = None
        if req.fields:
            url += "?" + urllib.parse.urlencode(req.fields)
        if req.body is not None:
            body = json.dumps(req.body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        what = f"{call} {req.method} {url}"
        t0 = time.monotonic()
        _CALL.deadline, _CALL.armed = t0 + self.timeout_s, {}
        status = None
        try:
            resp = self._pool.urlopen(
                req.method,
                url,
                body=body,
                headers=headers,
                preload_content=False,
                release_conn=False,
                redirect=False,
            )
            status = resp.status
            try:
                data = resp.read(MAX_ANSWER_BYTES + 1)
            except BaseException:
                resp.close()
                resp.release_conn()
                raise
            too_long = len(data) > MAX_ANSWER_BYTES
            if too_long:
                resp.close()  # unread bytes: the connection cannot carry another request
            resp.release_conn()
            content_type = resp.headers.get("Content-Type", "")
        except KMEError as exc:  # the KME ID check of a new connection
            raise KMEError(self._label, what, None, exc.rule, exc.kind) from None
        except (urllib3.exceptions.HTTPError, OSError, ssl.SSLError) as exc:
            late = time.monotonic() - t0 >= self.timeout_s
            cause = (
                f"no complete answer within {self.timeout_s:g} s"
                if late or isinstance(exc, urllib3.exceptions.TimeoutError)
                else _transport_cause(exc)
            )
            raise KMEError(self._label, what, status, cause, "transport") from None
        finally:
            struck = [_WATCHDOG.disarm(token) for token in _CALL.armed.values()]
            _CALL.deadline, _CALL.armed = None, {}
        if any(struck):
            # the socket was shut under a late answer: what arrived is cut short, not an answer
            cause = f"no complete answer within {self.timeout_s:g} s"
            raise KMEError(self._label, what, None, cause, "transport")
        latency_ms = 1e3 * (time.monotonic() - t0)
        log.debug("%s: %s -> %s in %.2f ms", self.name, what, status, latency_ms)
        return what, self._answer(what, status, data, too_long, content_type)

    def _answer(self, what: str, status: int, data: bytes, too_long: bool, ctype: str):
        clause = _CLAUSE[what.split()[0]]
        if too_long:
            self._violation(what, status, f"answer longer than {MAX_ANSWER_BYTES} bytes")
        if status not in STATUS_CODES:
            self._violation(
                what, status, f"status {status} is not one of 200, 400, 401, 503 ({clause})"
            )
        if status == 401:
            if data:
                self._violation(what, status, f"a 401 answer carries no body ({clause})")
            raise KMEError(self._label, what, status, "unauthorized (refused)", "refused")
        if not data:
            self._violation(what, status, f"a {status} answer carries a JSON body ({clause})")
        if ctype.split(";")[0].strip().lower() != "application/json":
            self._violation(what, status, f"Content-Type {ctype!r} is not application/json (4)")
        try:
            parsed = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            # the text is not quoted: it may hold key material
            self._violation(what, status, "body is not JSON in UTF-8 (4)")
        if status == 200:
            return parsed
        message = self._error_body(what, status, parsed)
        raise KMEError(
            self._label, what, status, f"refused: {message!r}", "refused", message=message
        )

    def _error_body(self, what: str, status: int, data) -> str:
        if not isinstance(data, dict):
            self._violation(what, status, "Error is not a JSON object (6.5)")
        extra = sorted(set(data) - {"message", "details"})
        if extra:
            self._violation(what, status, f"Error has fields not in 6.5: {extra}")
        if not isinstance(data.get("message"), str):
            self._violation(what, status, "Error.message is missing or not a string (6.5)")
        details = data.get("details", [])
        if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
            self._violation(what, status, "Error.details is not an array of objects (6.5)")
        return _one_line(data["message"], 200)

    def _status(self, call: str, data) -> Status:
        if not isinstance(data, dict):
            self._violation(call, 200, "Status is not a JSON object (6.1)")
        allowed = set(_STATUS_STR) | set(_STATUS_INT) | {"status_extension"}
        missing = sorted((set(_STATUS_STR) | set(_STATUS_INT)) - set(data))
        if missing:
            self._violation(call, 200, f"Status lacks {missing} (6.1)")
        extra = sorted(set(data) - allowed)
        if extra:
            self._violation(call, 200, f"Status has fields not in 6.1: {extra}")
        for f in _STATUS_STR:
            if not isinstance(data[f], str):
                self._violation(call, 200, f"Status.{f} is not a string (6.1)")
        for f in _STATUS_INT:
            if type(data[f]) is not int or data[f] < 0:  # bool is not an integer here
                self._violation(call, 200, f"Status.{f} is not a non-negative integer (6.1)")
        if "status_extension" in data and not isinstance(data["status_extension"], dict):
            self._violation(call, 200, "Status.status_extension is not an object (6.1)")
        if not data["min_key_size"] <= data["key_size"] <= data["max_key_size"]:
            self._violation(call, 200, "Status.key_size is outside min..max_key_size (6.1)")
        return Status(**data)

    def _container(self, call: str, data) -> list[Key]:
        if not isinstance(data, dict):
            self._violation(call, 200, "Key container is not a JSON object (6.3)")
        extra = sorted(set(data) - {"keys", "key_container_extension"})
        if extra:
            self._violation(call, 200, f"Key container has fields not in 6.3: {extra}")
        if "key_container_extension" in data and not isinstance(
            data["key_container_extension"], dict
        ):
            self._violation(call, 200, "key_container_extension is not an object (6.3)")
        items = data.get("keys")
        if not isinstance(items, list):
            self._violation(call, 200, "Key container lacks a 'keys' array (6.3)")
        keys: list[Key] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                self._violation(call, 200, f"keys[{i}] is not an object (6.3)")
            extra = sorted(set(item) - {"key_ID", "key", "key_ID_extension", "key_extension"})
            if extra:
                self._violation(call, 200, f"keys[{i}] has fields not in 6.3: {extra}")
            key_id = item.get("key_ID")
            if not isinstance(key_id, str) or not _UUID.match(key_id):
                self._violation(call, 200, f"keys[{i}].key_ID is not a UUID string (6.3)")
            if key_id in seen:
                self._violation(call, 200, f"keys[{i}].key_ID {key_id!r} appears twice (6.3)")
            seen.add(key_id)
            for ext in ("key_ID_extension", "key_extension"):
                if ext in item and not isinstance(item[ext], dict):
                    self._violation(call, 200, f"keys[{i}].{ext} is not an object (6.3)")
            material = _b64(item.get("key"))
            if material is None:
                # never quote the value: it is (or was meant to be) key material
                self._violation(call, 200, f"keys[{i}].key is not Base64 (6.3, RFC 4648)")
            if not material:
                self._violation(call, 200, f"keys[{i}].key is empty (6.3)")
            keys.append(
                Key(key_id, material, item.get("key_ID_extension"), item.get("key_extension"))
            )
        return keys


def _b64(text) -> bytes | None:
    """Strict RFC 4648 section 4 Base64 (padding, no other characters), else None."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def _transport_cause(exc: BaseException) -> str:
    """The root cause of a urllib3 failure, without urllib3's retry wording."""
    inner = exc
    while getattr(inner, "reason", None) is not None and inner.reason is not inner:
        inner = inner.reason
    if isinstance(inner, ssl.SSLError) or "SSL" in type(inner).__name__:
        return f"TLS failed: {inner}"
    return f"connection failed: {type(inner).__name__}: {inner}"
