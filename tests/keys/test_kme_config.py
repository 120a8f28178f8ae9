"""KME roles in bench files: validated like every other role, one line naming file, line and
key; a certificate or key file that is missing, unreadable or not PEM is named."""

from __future__ import annotations

import pytest

from hil.config import ConfigError, load_bench
from hil.emulator.kme import PKI


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pem")
    pki = PKI(folder / "pki")
    return pki


def _bench(tmp_path, pem, **changes) -> str:
    fields = {
        "base_url": "https://kme-a.lab:8443",
        "kme_id": "KME-A",
        "sae_id": "SAE-1",
        "peer_sae_id": "SAE-2",
        "cert": str(pem.identities["sae-master"].cert),
        "key": str(pem.identities["sae-master"].key),
        "ca": str(pem.ca_cert),
    }
    fields.update(changes)
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items() if v is not None)
    f = tmp_path / "vendor.yaml"
    f.write_text(f"name: vendor\nkmes:\n  kme_a:\n{body}")
    return f


def test_a_complete_kme_role_loads_with_paths_relative_to_the_bench_file(tmp_path, pem):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ca.pem").write_bytes(pem.ca_cert.read_bytes())
    spec, _ = load_bench(_bench(tmp_path, pem, ca="c/ca.pem"))
    assert spec.kmes["kme_a"].ca == "c/ca.pem" and spec.instruments == {}


@pytest.mark.parametrize(
    "changes, line, key, problem",
    [
        ({"kme_id": None}, 3, "kmes.kme_a.kme_id", "required key is missing"),
        ({"cert": "nope.pem"}, 8, "kmes.kme_a.cert", "nope.pem: file not found"),
        ({"ca": "KEY"}, 10, "kmes.kme_a.ca", "not a PEM certificate"),
        ({"key": "CERT"}, 9, "kmes.kme_a.key", "not a PEM private key"),
        ({"base_url": "http://kme:80"}, 4, "kmes.kme_a.base_url", "is not an https://"),
        ({"id_field": "dn"}, 11, "kmes.kme_a.id_field", "not one of cn, san_dns"),
        ({"timeout_s": "'5'"}, 11, "kmes.kme_a.timeout_s", "got the string '5'"),
    ],
)
def test_each_problem_is_one_line_naming_file_line_and_key(
    tmp_path, pem, changes, line, key, problem
):
    swap = {"KEY": str(pem.identities["sae-master"].key), "CERT": str(pem.ca_cert)}
    changes = {k: swap.get(v, v) for k, v in changes.items()}
    f = _bench(tmp_path, pem, **changes)
    with pytest.raises(ConfigError) as info:
        load_bench(f)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{f}:{line}: "), text
    assert key in text and problem in text, text


def test_an_unknown_kme_role_is_named(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text("name: b\nemulator: {}\nkmes:\n  kme_c:\n    resource: emulator\n")
    with pytest.raises(ConfigError, match=r"b.yaml:4: kmes.kme_c: unknown KME role 'kme_c'"):
        load_bench(f)
