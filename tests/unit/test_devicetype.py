"""Device type from the device certificate: the pure decision, path resolution, reading."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from usbupdater import config, devicetype
from usbupdater.devicetype import CertReading, cert_path, decide, read_certificate
from usbupdater.sim.lmp import write_credentials

CERT = Path("/var/sota/client.pem")


@pytest.mark.parametrize(
    ("configured", "reading", "expected"),
    [
        ("prod", CertReading(CERT, ()), "prod"),  # the key wins over the certificate
        ("ci", CertReading(CERT, ("production",)), "ci"),
        ("", CertReading(CERT, ("production",)), "prod"),
        ("", CertReading(CERT, ("production", "other")), "prod"),
        ("", CertReading(CERT, ("other", "production")), "ci"),  # the first entry decides
        ("", CertReading(CERT, ()), "ci"),
        ("", CertReading(CERT, ("Production",)), "ci"),  # exact match, as aktualizr-lite
        ("", CertReading(CERT, ("ci",)), "ci"),
        ("", CertReading(CERT, None, "no such file"), ""),
        ("", CertReading(None), ""),
        ("", None, ""),
    ],
)
def test_decide(configured: str, reading: CertReading, expected: str) -> None:
    got = decide(configured, reading)
    assert got.value == expected
    assert got.reason


def test_sources() -> None:
    assert decide("ci", None).source == "config"
    assert decide("", CertReading(CERT, ())).source == "certificate"
    assert decide("", CertReading(CERT, None, devicetype.NO_FILE)).source == "none"
    assert decide("", CertReading(CERT, None, "not a PEM X.509 certificate")).source == "unreadable"
    assert decide("", CertReading(None)).source == "none"


def test_reasons_say_why() -> None:
    assert "device_type" in decide("ci", None).reason
    assert "businessCategory=production" in decide("", CertReading(CERT, ("production",))).reason
    assert "absent" in decide("", CertReading(CERT, ())).reason
    assert "no such file" in decide("", CertReading(CERT, None, "no such file")).reason


def test_cert_path_follows_aktualizr_based_path() -> None:
    base = Path("/var/sota/import")
    assert cert_path(base, None) == Path("/var/sota/client.pem")  # LmP's sota.toml value
    assert cert_path(base, "client.pem") == Path("/var/sota/import/client.pem")
    assert cert_path(base, "/x/c.pem") == Path("/x/c.pem")
    assert cert_path(base, "") is None  # PKCS#11 devices set the key empty
    assert cert_path(Path(""), "c.pem") == Path("c.pem")


def _cert(tmp_path: Path, production: bool) -> Path:
    return write_credentials(tmp_path, str(uuid.uuid4()), "acme", production)


def test_read_production_and_ci_certificates(tmp_path: Path) -> None:
    assert read_certificate(_cert(tmp_path / "p", True)).categories == ("production",)
    assert read_certificate(_cert(tmp_path / "c", False)).categories == ()


def test_unreadable_certificates_keep_the_type_unknown(tmp_path: Path) -> None:
    missing = read_certificate(tmp_path / "nope.pem")
    assert missing.categories is None and missing.error == "no such file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    assert read_certificate(garbage).error == "not a PEM X.509 certificate"
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (devicetype.MAX_CERT_BYTES + 1))
    assert "larger than" in read_certificate(big).error
    assert read_certificate(tmp_path).error in ("not a regular file", "Is a directory")
    assert read_certificate(None).path is None


def _config(tmp_path: Path, body: str) -> config.Config:
    cfg = tmp_path / "sota.toml"
    cfg.write_text('[provision]\nprimary_ecu_hardware_id = "hw"\n' + body)
    return config.load([cfg])


def test_config_resolves_device_type_from_import_path(tmp_path: Path) -> None:
    _cert(tmp_path / "import", True)
    rel = _config(tmp_path, f'[import]\nbase_path = "{tmp_path / "import"}"\n'
                  'tls_clientcert_path = "client.pem"\n')  # fmt: skip
    assert rel.usbupdater.device_type == "prod"
    assert "businessCategory=production" in rel.usbupdater.device_type_reason
    assert str(tmp_path / "import" / "client.pem") in rel.usbupdater.device_type_reason
    ci = _cert(tmp_path / "ci", False)
    assert (
        _config(tmp_path, f'[import]\ntls_clientcert_path = "{ci}"\n').usbupdater.device_type
        == "ci"
    )


def test_config_explicit_device_type_wins_and_no_cert_is_unknown(tmp_path: Path) -> None:
    prod = _cert(tmp_path / "p", True)
    explicit = _config(
        tmp_path, f'[import]\ntls_clientcert_path = "{prod}"\n[usbupdater]\ndevice_type = "ci"\n'
    )
    assert explicit.usbupdater.device_type == "ci"
    none = _config(tmp_path, f'[import]\ntls_clientcert_path = "{tmp_path / "absent.pem"}"\n')
    assert none.usbupdater.device_type == ""
    assert "no such file" in none.usbupdater.device_type_reason
    empty = _config(tmp_path, '[import]\ntls_clientcert_path = ""\n')
    assert empty.usbupdater.device_type == ""
