"""ETSI GS QKD 014 V1.1.1 conformance of a KME pair, one test per rule, each named after the
clause it checks: a vendor report says where the KMEs conform and where they deviate.

Every answer goes through the project's client (hil.instruments.kme), which holds it to the
standard's formats (clause 6) and status codes; the refusals a client cannot provoke through
its own API (no certificate, another SAE's certificate) are sent with the standard library.
A test counts the rule's violations and judges them against its criterion (at most 0); a
failure names the clause and what the KME did.
"""

from __future__ import annotations

import ssl
import uuid

import pytest

from hil.fixtures.keyplane import api_path, raw_request, wait_for_stock
from hil.instruments.kme import KMEClient, KMEError

STOCK_TIMEOUT_S = 10.0


def conform(judge_value, cid: str, problems: list[str]) -> None:
    """Judge ``cid`` on the number of violations; a failure names the clause and each one."""
    clause = cid.split("-")[1]
    try:
        judge_value(cid, float(len(problems)), evidence=problems)
    except pytest.fail.Exception:
        pytest.fail(
            f"{cid}: ETSI GS QKD 014 V1.1.1 clause {clause} not met: " + "; ".join(problems),
            pytrace=False,
        )


def refused(call, status: int) -> list[str]:
    """Run ``call``; a problem unless the KME refused it with ``status`` as V1.1.1 asks."""
    try:
        call()
    except KMEError as exc:
        if exc.kind == "refused" and exc.status == status:
            return []
        return [str(exc)]
    return [f"served (200) where V1.1.1 asks {status}"]


@pytest.fixture(scope="module")
def stocked(kme_a):
    """Some key in the store before the tests that take keys."""
    stored = wait_for_stock(kme_a, 16, STOCK_TIMEOUT_S)
    if stored < 16:
        pytest.skip(f"kme_a holds {stored} keys after {STOCK_TIMEOUT_S:g} s (16 needed)")
    return stored


def test_clause_5_2_status(kme_a, judge_value):
    problems = []
    try:
        st = kme_a.status()
        if st.target_KME_ID == st.source_KME_ID:
            problems.append("target_KME_ID equals source_KME_ID (6.1)")
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.2-STATUS", problems)


def test_clause_5_3_enc_keys_post(kme_a, stocked, judge_value):
    problems = []
    try:
        kme_a.enc_keys(number=2, size=256)  # the client checks number, size, format
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.3-POST", problems)


def test_clause_5_3_enc_keys_get(kme_a, stocked, judge_value):
    problems = []
    try:
        kme_a.enc_keys(number=2, size=128, method="GET")
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.3-GET", problems)


def test_clause_5_3_enc_keys_defaults(kme_a, stocked, judge_value):
    problems = []
    try:
        kme_a.status()  # the client learns key_size, which a bare request must deliver
        kme_a.enc_keys(method="GET")
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.3-DEFAULT", problems)


def test_clause_5_3_number_above_max(kme_a, judge_value):
    most = kme_a.status().max_key_per_request
    problems = refused(lambda: kme_a.enc_keys(number=most + 1), 400)
    conform(judge_value, "E014-5.3-NUMBER", problems)


def test_clause_5_3_size_outside_range(kme_a, judge_value):
    st = kme_a.status()
    problems = refused(lambda: kme_a.enc_keys(number=1, size=st.max_key_size + 8), 400)
    if st.min_key_size > 8:
        problems += refused(lambda: kme_a.enc_keys(number=1, size=st.min_key_size - 8), 400)
    conform(judge_value, "E014-5.3-SIZE", problems)


def test_clause_5_3_extension_mandatory_unsupported(kme_a, judge_value):
    ext = [{"qkdhil_unsupported_extension": True}]
    problems = refused(lambda: kme_a.enc_keys(number=1, extension_mandatory=ext), 400)
    conform(judge_value, "E014-5.3-EXTENSION", problems)


def test_clause_5_4_dec_keys_post(kme_a, kme_b, stocked, judge_value):
    problems = []
    try:
        keys = kme_a.enc_keys(number=3, size=256)
        got = kme_b.dec_keys(kme_a.sae_id, [k.key_ID for k in keys])
        if got != keys:  # Key equality: same ID and bytes (constant-time compare)
            problems.append("the slave's keys differ from the master's (5.4)")
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.4-POST", problems)


def test_clause_5_4_dec_keys_get(kme_a, kme_b, stocked, judge_value):
    problems = []
    try:
        (key,) = kme_a.enc_keys(number=1, size=256)
        (got,) = kme_b.dec_keys(kme_a.sae_id, [key.key_ID], method="GET")
        if got != key:
            problems.append("the slave's key differs from the master's (5.4)")
    except KMEError as exc:
        problems.append(str(exc))
    conform(judge_value, "E014-5.4-GET", problems)


def test_clause_5_4_key_id_twice(kme_a, kme_b, stocked, judge_value):
    (key,) = kme_a.enc_keys(number=1, size=256)
    kme_b.dec_keys(kme_a.sae_id, [key.key_ID])
    problems = refused(lambda: kme_b.dec_keys(kme_a.sae_id, [key.key_ID]), 400)
    conform(judge_value, "E014-5.4-TWICE", problems)


def test_clause_5_4_unknown_key_id(kme_a, kme_b, judge_value):
    problems = refused(lambda: kme_b.dec_keys(kme_a.sae_id, [str(uuid.uuid4())]), 400)
    conform(judge_value, "E014-5.4-UNKNOWN", problems)


def test_clause_5_4_master_cannot_fetch_its_keys(kme_a, kme_b, stocked, judge_value):
    keys = kme_a.enc_keys(number=1, size=256)
    ids = [k.key_ID for k in keys]
    problems = refused(lambda: kme_a.dec_keys(kme_a.sae_id, ids), 401)
    kme_b.dec_keys(kme_a.sae_id, ids)  # the slave still gets them: nothing left pending
    conform(judge_value, "E014-5.4-MASTER", problems)


def test_clause_5_3_store_that_cannot_serve(bench, kme_a, judge_value):
    """A store that cannot serve answers 503 with an Error: never 200 with fewer keys."""
    if bench.has("control"):
        bench.control.laser_off(True)  # no supply; then the stock emptied
        bench.control.kme_clear_store()
        try:
            problems = refused(lambda: kme_a.enc_keys(number=2, size=256), 503)
        finally:
            bench.control.laser_off(False)
    else:
        most = kme_a.status().max_key_per_request
        problems = None
        for _ in range(200):  # drain: at most 200 full requests
            try:
                kme_a.enc_keys(number=most)
            except KMEError as exc:
                ok = exc.kind == "refused" and exc.status == 503
                problems = [] if ok else [str(exc)]
                break
        if problems is None:
            pytest.skip("the store did not run empty within 200 full requests: not measured")
    conform(judge_value, "E014-5.3-EMPTY", problems)


def test_clause_4_unmapped_certificate(bench, kme_a, judge_value):
    info = bench.kme_info["kme_a"]
    if info["outsider_cert"] is None:
        pytest.skip("the bench file names no outsider_cert/outsider_key: not measured")
    status, _, body = raw_request(
        info,
        "GET",
        api_path(info["peer_sae_id"], "status"),
        cert=(info["outsider_cert"], info["outsider_key"]),
    )
    problems = []
    if status != 401:
        problems.append(f"an unmapped SAE certificate got HTTP {status}, not 401 (5.2)")
    elif body:
        problems.append("a 401 answer carries a body (5.2)")
    conform(judge_value, "E014-4-OUTSIDER", problems)


def test_clause_4_no_client_certificate(bench, kme_a, judge_value):
    info = bench.kme_info["kme_a"]
    problems = []
    try:
        status, _, _ = raw_request(info, "GET", api_path(info["peer_sae_id"], "status"), cert=None)
        problems.append(f"served HTTP {status} without a client certificate (4: mutual TLS)")
    except (ssl.SSLError, OSError):
        pass  # the handshake (or the first read after it, TLS 1.3) failed: as it must
    conform(judge_value, "E014-4-NOCERT", problems)


def test_clause_4_kme_certificate_carries_kme_id(bench, kme_a, judge_value):
    i = bench.kme_info["kme_a"]
    problems = []
    client = KMEClient(
        i["base_url"],
        i["kme_id"],
        i["sae_id"],
        i["cert"],
        i["key"],
        i["ca"],
        id_field=i["id_field"],
        timeout_s=i["timeout_s"],
        check_hostname=i["check_hostname"],
        name="kme_a",
    )
    try:
        client.status(i["peer_sae_id"])  # a new connection: the KME ID checked on it
    except KMEError as exc:
        problems.append(str(exc))
    finally:
        client.close()
    conform(judge_value, "E014-4-FOREIGN", problems)
