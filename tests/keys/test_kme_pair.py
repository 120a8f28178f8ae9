"""The emulated KME pair and the ETSI GS QKD 014 client over real HTTPS with mutual TLS on
loopback: an independent client (plain ``requests``) completes master -> slave and meets the
standard's refusals; the project's client checks the KME's identity, trusts only the bench CA,
catches each deviation profile, keeps its deadline, and never shows a key byte."""

from __future__ import annotations

import base64
import logging
import pickle
import re
import socket
import ssl
import threading

import pytest
import requests

from hil.emulator.kme import DEVIATIONS, ID_FIELDS, PKI, KMEPair
from hil.instruments.kme import KMEClient, KMEError


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("bench-pki"))


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory):
    """Another CA with certificates of the same names: a bench the client must not trust."""
    return PKI(tmp_path_factory.mktemp("foreign-pki"), ca_name="some other CA")


@pytest.fixture(scope="module")
def pair(pki):
    with KMEPair(pki=pki, initial_key_count=2000) as p:
        yield p


@pytest.fixture(autouse=True)
def _spec_exact(pair):
    pair.set_deviations(())
    yield
    pair.set_deviations(())


def _client(pair, kme_name, sae_name, **kw):
    info = pair.ready_info()
    sae = info["saes"][sae_name]
    kme = info["kmes"][kme_name]
    return KMEClient(
        kme["url"],
        kme["kme_id"],
        sae["sae_id"],
        sae["cert"],
        sae["key"],
        kw.pop("ca", info["ca_cert"]),
        id_field=info["id_field"],
        name=kme_name,
        **kw,
    )


@pytest.fixture()
def master(pair):
    with _client(pair, "kme_a", "master") as c:
        yield c


@pytest.fixture()
def slave(pair):
    with _client(pair, "kme_b", "slave") as c:
        yield c


# -- an independent client: plain requests with the ready file's certificates


def test_requests_master_to_slave_and_refusals(pair, foreign_pki):
    info = pair.ready_info()
    ca = info["ca_cert"]  # passed per request: a session's verify= loses to REQUESTS_CA_BUNDLE
    m, s, o = (info["saes"][n] for n in ("master", "slave", "outsider"))
    url_a, url_b = info["kmes"]["kme_a"]["url"], info["kmes"]["kme_b"]["url"]
    as_master = {"cert": (m["cert"], m["key"]), "verify": ca, "timeout": 10}
    as_slave = {"cert": (s["cert"], s["key"]), "verify": ca, "timeout": 10}

    r = requests.post(
        f"{url_a}/api/v1/keys/{s['sae_id']}/enc_keys", json={"number": 2, "size": 256}, **as_master
    )
    assert r.status_code == 200, r.text
    issued = r.json()["keys"]
    assert len(issued) == 2 and all(len(base64.b64decode(k["key"])) == 32 for k in issued)
    ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in issued]}

    # dec_keys by the master on its own KME, before the slave fetched them: 401, no body
    r = requests.post(f"{url_a}/api/v1/keys/{m['sae_id']}/dec_keys", json=ids, **as_master)
    assert r.status_code == 401 and r.content == b""

    # the slave on its KME, with the master's ID in the path: the same bytes
    r = requests.post(f"{url_b}/api/v1/keys/{m['sae_id']}/dec_keys", json=ids, **as_slave)
    assert r.status_code == 200, r.text
    assert r.json()["keys"] == issued

    # the same IDs again: delivered keys are gone, 400 with the standard's message
    r = requests.post(f"{url_b}/api/v1/keys/{m['sae_id']}/dec_keys", json=ids, **as_slave)
    assert r.status_code == 400
    assert r.json() == {"message": "one or more keys specified are not found on KME"}

    # the outsider: a certificate of the bench CA that no KME maps: 401, no body
    r = requests.get(
        f"{url_a}/api/v1/keys/{s['sae_id']}/status",
        cert=(o["cert"], o["key"]),
        verify=ca,
        timeout=10,
    )
    assert r.status_code == 401 and r.content == b""

    # no client certificate, or one of another CA: the TLS handshake fails
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url_a}/api/v1/keys/{s['sae_id']}/status", verify=ca, timeout=10)
    other = foreign_pki.identities["sae-master"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(
            f"{url_a}/api/v1/keys/{s['sae_id']}/status",
            cert=(str(other.cert), str(other.key)),
            verify=ca,
            timeout=10,
        )


def test_requests_sees_standard_400s(pair):
    info = pair.ready_info()
    m, s = info["saes"]["master"], info["saes"]["slave"]
    url = f"{info['kmes']['kme_a']['url']}/api/v1/keys/{s['sae_id']}/enc_keys"
    kw = {"cert": (m["cert"], m["key"]), "verify": info["ca_cert"], "timeout": 10}
    cases = [
        ({"size": 100}, "size shall be a multiple of 8"),
        ({"size": 8}, "size shall be between 64 and 1024"),
        ({"number": 129}, "number shall be between 1 and 128"),
        (
            {"extension_mandatory": [{"abc_route_type": "direct"}]},
            "not all extension_mandatory parameters are supported",
        ),
    ]
    for body, message in cases:
        r = requests.post(url, json=body, **kw)
        assert (r.status_code, r.json()["message"]) == (400, message), body
    # extension_optional may be ignored (V1.1.1): the request is served
    r = requests.post(url, json={"extension_optional": [{"abc_max_age": 10}]}, **kw)
    assert r.status_code == 200 and len(r.json()["keys"]) == 1


# -- the project's client


def test_driver_forms_round_trip(pair, master, slave):
    slave_id, master_id = slave.sae_id, master.sae_id
    st = master.status(slave_id)
    assert (st.source_KME_ID, st.target_KME_ID) == ("kme-a", "kme-b")
    assert (st.master_SAE_ID, st.slave_SAE_ID, st.key_size) == (master_id, slave_id, 256)
    posted = master.enc_keys(slave_id, number=3, size=512)
    got = slave.dec_keys(master_id, [k.key_ID for k in reversed(posted)])
    assert got == list(reversed(posted)) and all(k.size == 512 for k in got)
    bare = master.enc_keys(slave_id, method="GET")  # the KME's defaults: 1 key of key_size
    assert len(bare) == 1 and bare[0].size == 256
    assert slave.dec_keys(master_id, [bare[0].key_ID], method="GET") == bare
    sized = master.enc_keys(slave_id, number=2, size=128, method="GET")
    assert [k.size for k in sized] == [128, 128]
    assert slave.dec_keys(master_id, [k.key_ID for k in sized]) == sized
    # master and slave never see each other's key ... but they hold the same bytes
    assert posted[0].material == got[-1].material


def test_driver_names_refusals(pair, master, slave):
    keys = master.enc_keys(slave.sae_id, number=1)
    with pytest.raises(KMEError) as e:
        master.dec_keys(master.sae_id, [keys[0].key_ID])
    assert (e.value.status, e.value.kind) == (401, "refused")
    assert (
        "kme_a" in str(e.value) and "dec_keys POST" in str(e.value) and "HTTP 401" in str(e.value)
    )
    slave.dec_keys(master.sae_id, [keys[0].key_ID])
    with pytest.raises(KMEError) as e:
        slave.dec_keys(master.sae_id, [keys[0].key_ID], method="GET")
    assert (e.value.status, e.value.kind) == (400, "refused")
    assert e.value.message == "one or more keys specified are not found on KME"
    with pytest.raises(KMEError) as e:
        master.enc_keys(slave.sae_id, additional_slave_sae_ids=["sae-other"])
    assert (e.value.status, e.value.kind) == (400, "refused")
    with pytest.raises(KMEError) as e:
        master.enc_keys(slave.sae_id, extension_mandatory=[{"abc_route_type": "direct"}])
    assert e.value.message == "not all extension_mandatory parameters are supported"


def test_empty_store_is_503_and_supply_refills_in_link_time(pki):
    link_t = [0.0]  # the link clock the supply reads (seconds)
    up = [True]
    with KMEPair(
        pki=pki,
        rate_bps=lambda state: 2560.0 if state else 0.0,  # 10 keys of 256 bits per second
        clock=lambda: link_t[0],
        link_state=lambda: up[0],
        max_key_count=25,
    ) as pair:
        with _client(pair, "kme_a", "master") as m:
            slave_id = pair.sae_id("sae-slave")
            assert m.status(slave_id).stored_key_count == 0
            with pytest.raises(KMEError) as e:
                m.enc_keys(slave_id)
            assert (e.value.status, e.value.kind, e.value.message) == (
                503,
                "refused",
                "key data access error",
            )
            link_t[0] = 1.0
            assert m.status(slave_id).stored_key_count == 10
            assert len(m.enc_keys(slave_id, number=4)) == 4
            assert m.status(slave_id).stored_key_count == 6
            up[0] = False  # fiber cut: nothing is added while link time passes
            link_t[0] = 5.0
            assert m.status(slave_id).stored_key_count == 6
            up[0] = True
            link_t[0] = 100.0  # far more than fits: the stock stops at max_key_count
            assert m.status(slave_id).stored_key_count == 25
            assert pair.supply.added_bits == (10 + 19) * 256
            # push mode: the link advances the supply with the state of each step
            pair.supply.advance_to(100.5, True)
            assert m.status(slave_id).stored_key_count == 25


@pytest.mark.parametrize(
    ("deviation", "status", "rule"),
    [
        ("not_found_404", 404, "status 404 is not one of 200, 400, 401, 503"),
        ("short_200", 200, "2 keys delivered, 5 asked"),
        ("body_on_401", 401, "a 401 answer carries no body"),
        ("master_readback", 200, "keys delivered to their own master"),
    ],
)
def test_driver_catches_each_deviation(pki, deviation, status, rule):
    assert deviation in DEVIATIONS
    with KMEPair(pki=pki, rate_bps=lambda s: 0.0, initial_key_count=3) as pair:
        with _client(pair, "kme_a", "master") as m, _client(pair, "kme_b", "slave") as s:
            pair.set_deviations([deviation])
            with pytest.raises(KMEError) as e:
                if deviation == "not_found_404":
                    s.dec_keys(m.sae_id, ["00000000-0000-4000-8000-000000000000"])
                elif deviation == "short_200":
                    m.enc_keys(s.sae_id)  # 1 of the 3
                    m.enc_keys(s.sae_id, number=5)
                else:
                    keys = m.enc_keys(s.sae_id)
                    m.dec_keys(m.sae_id, [keys[0].key_ID])
    err = e.value
    assert (err.kind, err.status) == ("violation", status)
    text = str(err)
    assert text.startswith("kme_a" if deviation != "not_found_404" else "kme_b")
    assert f"HTTP {status}" in text and rule in text and "V1.1.1" in text
    assert ("enc_keys" if deviation == "short_200" else "dec_keys") in text
    assert "\n" not in text


@pytest.mark.parametrize("field", ID_FIELDS)
def test_kme_id_confirmed_from_each_certificate_field(pki, field):
    with KMEPair(pki=pki, id_field=field, initial_key_count=5) as pair:
        info = pair.ready_info()
        assert info["kmes"]["kme_a"]["kme_id"] == pki.identities["kme-a"].id(field)
        with _client(pair, "kme_a", "master") as m:
            assert m.status(pair.sae_id("sae-slave")).source_KME_ID == m.kme_id
        # the same certificate, expected to be the other KME: refused before any request
        sae = info["saes"]["master"]
        wrong = KMEClient(
            info["kmes"]["kme_a"]["url"],
            info["kmes"]["kme_b"]["kme_id"],
            sae["sae_id"],
            sae["cert"],
            sae["key"],
            info["ca_cert"],
            id_field=field,
            name="kme_a",
        )
        with wrong, pytest.raises(KMEError) as e:
            wrong.enc_keys(pair.sae_id("sae-slave"))
        assert e.value.kind == "identity" and field in str(e.value)
        assert pair.store.pending_count() == 0  # nothing was sent: no key was issued


def test_bench_ca_wins_over_environment(pair, pki, foreign_pki, monkeypatch):
    # the environment points at another CA: neither this nor the system store is trusted
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(foreign_pki.ca_cert))
    with _client(pair, "kme_a", "master") as m:
        assert m.status(pair.sae_id("sae-slave")).source_KME_ID == "kme-a"
    # a KME whose certificate another CA signed is refused, the bench CA given
    with KMEPair(pki=foreign_pki, initial_key_count=1) as impostor:
        info = impostor.ready_info()
        bench_sae = pki.identities["sae-master"]
        c = KMEClient(
            info["kmes"]["kme_a"]["url"],
            "kme-a",
            "sae-master",
            bench_sae.cert,
            bench_sae.key,
            pki.ca_cert,
            name="kme_a",
        )
        with c, pytest.raises(KMEError) as e:
            c.status("sae-slave")
        assert e.value.kind == "transport" and "certificate verify failed" in str(e.value)
    # and the bench KMEs refuse a client certificate of another CA
    other = foreign_pki.identities["sae-master"]
    info = pair.ready_info()
    c = KMEClient(
        info["kmes"]["kme_a"]["url"],
        "kme-a",
        "sae-master",
        other.cert,
        other.key,
        pki.ca_cert,
        name="kme_a",
    )
    with c, pytest.raises(KMEError) as e:
        c.status("sae-slave")
    assert e.value.kind == "transport" and e.value.status is None


def test_deadline_holds_against_a_trickling_kme(pki):
    """A KME that answers one header byte every 50 ms never trips a read timeout; the
    request still ends at its deadline."""
    ident = pki.identities["kme-a"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(10)
    stop = threading.Event()

    def trickle():
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        with ctx.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(200):  # at most 10 s, then it stops by itself
                    if stop.wait(0.05):
                        return
                    conn.sendall(b"a")
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    sae = pki.identities["sae-master"]
    c = KMEClient(
        f"https://127.0.0.1:{port}",
        "kme-a",
        "sae-master",
        sae.cert,
        sae.key,
        pki.ca_cert,
        timeout_s=0.5,
        name="kme_a",
    )
    try:
        with c, pytest.raises(KMEError) as e:
            c.status("sae-slave")
        assert e.value.kind == "transport"
        assert "no complete answer within 0.5 s" in str(e.value)
    finally:
        stop.set()
        listener.close()
        t.join(5)


# -- no key byte outside the Key objects


_B64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{32,}")


def _leaks(text: str, materials: list[bytes]) -> list[str]:
    found = []
    for raw in materials:
        forms = {
            "raw": raw.decode("latin-1"),
            "base64": base64.b64encode(raw).decode(),
            "hex": raw.hex(),
            "HEX": raw.hex().upper(),
            "repr": repr(raw)[2:-1],
        }
        found += [name for name, form in forms.items() if form in text]
    # any long Base64 or hex run (a key ID is a UUID: its longest hex run is 12)
    found += _B64_RUN.findall(text) + _HEX_RUN.findall(text)
    return found


def test_no_key_byte_in_repr_str_errors_or_logs(pki, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    materials: list[bytes] = []
    with KMEPair(pki=pki, rate_bps=lambda s: 0.0, initial_key_count=40) as pair:
        with _client(pair, "kme_a", "master") as m, _client(pair, "kme_b", "slave") as s:
            keys = m.enc_keys(s.sae_id, number=4) + m.enc_keys(s.sae_id, method="GET")
            got = s.dec_keys(m.sae_id, [k.key_ID for k in keys])
            assert got == keys
            materials += [k.material for k in keys]
            texts += [
                repr(keys),
                str(keys),
                f"{keys[0]}",
                " ".join(map(str, keys)),
                repr(m),
                str(s),
            ]
            with pytest.raises(TypeError) as e:
                pickle.dumps(keys[0])
            texts.append(str(e.value))
            fresh = m.enc_keys(s.sae_id, number=2)
            materials += [k.material for k in fresh]
            for deviations, call in [
                ((), lambda: m.dec_keys(m.sae_id, [fresh[0].key_ID])),  # 401
                ((), lambda: s.dec_keys(m.sae_id, [keys[0].key_ID])),  # 400
                (("master_readback",), lambda: m.dec_keys(m.sae_id, [fresh[1].key_ID])),
                (("short_200",), lambda: m.enc_keys(s.sae_id, number=128, size=1024)),
                (("body_on_401",), lambda: m.dec_keys(m.sae_id, [fresh[0].key_ID])),
            ]:
                pair.set_deviations(deviations)
                with pytest.raises(KMEError) as e:
                    call()
                texts += [str(e.value), repr(e.value)]
    texts.append(caplog.text)
    assert "enc_keys" in caplog.text  # the driver did log its calls
    for text in texts:
        assert _leaks(text, materials) == [], text[:200]
