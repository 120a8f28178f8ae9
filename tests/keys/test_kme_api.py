"""The ETSI GS QKD 014 client without a network: the exact requests it puts on the wire
(V1.1.1 paths, query fields and JSON bodies), its Key objects, and the answer rules it holds a
KME to, each rule fed one answer that breaks it."""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys

import pytest

from hil.emulator.kme import PKI
from hil.instruments.kme import ApiV1, Key, KMEClient, KMEError, Request, _b64

MASTER, SLAVE = "SAE_1", "SAE/2 b"  # a slash and a space: both are escaped in the path
KID = "5c1b8a1e-0c6f-4bd0-8d2a-9a3f4c1e2b7d"


def test_status_path():
    assert ApiV1().status(SLAVE) == Request("GET", "/api/v1/keys/SAE%2F2%20b/status")


def test_enc_keys_requests():
    api = ApiV1()
    path = "/api/v1/keys/SAE%2F2%20b/enc_keys"
    assert api.enc_keys(SLAVE) == Request("POST", path, body={})
    assert api.enc_keys(SLAVE, method="GET") == Request("GET", path)
    assert api.enc_keys(SLAVE, 3, 512, method="GET") == Request(
        "GET", path, fields={"number": 3, "size": 512}
    )
    assert api.enc_keys(SLAVE, size=128, method="GET").fields == {"size": 128}
    full = api.enc_keys(
        SLAVE,
        2,
        256,
        additional_slave_sae_ids=["SAE_3"],
        extension_mandatory=[{"abc_route_type": "direct"}],
        extension_optional=[{"abc_max_age": 10}],
    )
    assert full == Request(
        "POST",
        path,
        body={
            "number": 2,
            "size": 256,
            "additional_slave_SAE_IDs": ["SAE_3"],
            "extension_mandatory": [{"abc_route_type": "direct"}],
            "extension_optional": [{"abc_max_age": 10}],
        },
    )
    with pytest.raises(ValueError, match="GET carries only number and size"):
        api.enc_keys(SLAVE, additional_slave_sae_ids=["SAE_3"], method="GET")
    with pytest.raises(ValueError, match="GET or POST"):
        api.enc_keys(SLAVE, method="PUT")


def test_dec_keys_requests_carry_the_masters_id():
    api = ApiV1()
    path = "/api/v1/keys/SAE_1/dec_keys"
    assert api.dec_keys(MASTER, [KID, KID.upper()]) == Request(
        "POST", path, body={"key_IDs": [{"key_ID": KID}, {"key_ID": KID.upper()}]}
    )
    assert api.dec_keys(MASTER, [KID], method="GET") == Request("GET", path, fields={"key_ID": KID})
    with pytest.raises(ValueError, match="exactly one key_ID"):
        api.dec_keys(MASTER, [KID, KID], method="GET")


def test_key_shows_id_and_size_only():
    material = bytes(range(32))
    k = Key(KID, material)
    assert repr(k) == str(k) == f"Key(key_ID={KID!r}, size=256)"
    assert k.material == material and k.size == 256
    assert k == Key(KID, material) and k != Key(KID, bytes(32)) and hash(k) == hash(KID)
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(k)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("AAECAw==", True),
        ("AAECAw", False),  # padding is required (RFC 4648 section 4)
        ("AAEC Aw==", False),
        ("AAECAw==\n", False),
        ("-_-_", False),  # the URL-safe alphabet is another encoding
        ("AAECAx==", False),  # non-zero pad bits: not the canonical encoding
        (12, False),
    ],
)
def test_base64_is_strict(text, ok):
    assert (_b64(text) is not None) is ok


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    pki = PKI(tmp_path_factory.mktemp("pki"))
    sae = pki.identities["sae-master"]
    return KMEClient(
        "https://127.0.0.1:1", "kme-a", "sae-master", sae.cert, sae.key, pki.ca_cert, name="kme_a"
    )


GOOD_KEY = {"key_ID": KID, "key": base64.b64encode(bytes(32)).decode()}


@pytest.mark.parametrize(
    ("answer", "rule"),
    [
        ([], "Key container is not a JSON object"),
        ({"Keys": [GOOD_KEY]}, "fields not in 6.3: ['Keys']"),
        ({"keys": GOOD_KEY}, "lacks a 'keys' array"),
        ({"keys": [GOOD_KEY], "key_container_extension": []}, "key_container_extension is not"),
        ({"keys": [KID]}, "keys[0] is not an object"),
        ({"keys": [{**GOOD_KEY, "key_id": KID}]}, "keys[0] has fields not in 6.3: ['key_id']"),
        ({"keys": [{**GOOD_KEY, "key_ID": "42"}]}, "keys[0].key_ID is not a UUID"),
        ({"keys": [GOOD_KEY, GOOD_KEY]}, "keys[1].key_ID"),
        ({"keys": [{**GOOD_KEY, "key": "AAECAw"}]}, "keys[0].key is not Base64"),
        ({"keys": [{**GOOD_KEY, "key": ""}]}, "keys[0].key is empty"),
        ({"keys": [{**GOOD_KEY, "key_extension": "x"}]}, "keys[0].key_extension is not"),
    ],
)
def test_key_container_rules(client, answer, rule):
    with pytest.raises(KMEError) as e:
        client._container("enc_keys POST /p", answer)
    assert e.value.kind == "violation" and rule in str(e.value)
    assert str(e.value).startswith("kme_a (KME 'kme-a' at https://127.0.0.1:1): enc_keys POST")


GOOD_STATUS = {
    "source_KME_ID": "kme-a",
    "target_KME_ID": "kme-b",
    "master_SAE_ID": "sae-master",
    "slave_SAE_ID": "sae-slave",
    "key_size": 352,
    "stored_key_count": 25000,
    "max_key_count": 100000,
    "max_key_per_request": 128,
    "max_key_size": 1024,
    "min_key_size": 64,
    "max_SAE_ID_count": 0,
}


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"stored_key_count": "25000"}, "Status.stored_key_count is not a non-negative integer"),
        ({"max_SAE_ID_count": False}, "Status.max_SAE_ID_count is not a non-negative integer"),
        ({"key_size": 352.0}, "Status.key_size is not a non-negative integer"),
        ({"target_KME_ID": 2}, "Status.target_KME_ID is not a string"),
        ({"key_size": 2048}, "key_size is outside min..max_key_size"),
        ({"status_extension": 1}, "status_extension is not an object"),
        ({"stored_key_Count": 1}, "fields not in 6.1: ['stored_key_Count']"),
        ({"min_key_size": None}, "Status.min_key_size is not a non-negative integer"),
    ],
)
def test_status_rules(client, change, rule):
    with pytest.raises(KMEError) as e:
        client._status("status GET /p", {**GOOD_STATUS, **change})
    assert rule in str(e.value)
    missing = dict(GOOD_STATUS)
    del missing["max_key_count"]
    with pytest.raises(KMEError, match=r"Status lacks \['max_key_count'\]"):
        client._status("status GET /p", missing)
    assert client._status("status GET /p", GOOD_STATUS).key_size == 352  # the spec's example


@pytest.mark.parametrize(
    ("status", "body", "ctype", "rule", "kind"),
    [
        (404, b'{"message": "x"}', "application/json", "status 404 is not one of", "violation"),
        (401, b"{}", "application/json", "a 401 answer carries no body", "violation"),
        (401, b"", "", "unauthorized (refused)", "refused"),
        (503, b"", "", "a 503 answer carries a JSON body", "violation"),
        (400, b'{"message": "m"}', "text/plain", "Content-Type 'text/plain'", "violation"),
        (400, b"{not json", "application/json", "body is not JSON in UTF-8", "violation"),
        (400, b'{"msg": "m"}', "application/json", "Error has fields not in 6.5", "violation"),
        (400, b'{"message": 1}', "application/json", "Error.message is missing", "violation"),
        (503, b'{"message": "m", "details": ["x"]}', "application/json", "details", "violation"),
        (503, b'{"message": "key data access error"}', "application/json", "refused", "refused"),
    ],
)
def test_answer_rules(client, status, body, ctype, rule, kind):
    with pytest.raises(KMEError) as e:
        client._answer("dec_keys POST /p", status, body, False, ctype)
    assert (e.value.kind, e.value.status) == (kind, status)
    assert rule in str(e.value) and f"HTTP {status}" in str(e.value)


def test_a_200_is_parsed(client):
    assert client._answer("status GET /p", 200, b'{"a": 1}', False, "application/json") == {"a": 1}


def test_emulated_kme_imports_no_driver_or_analysis():
    code = (
        "import sys, hil.emulator.kme; "
        "bad = [m for m in sys.modules if m.startswith(('hil.instruments', 'hil.analysis'))]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "[]"), out.stderr
