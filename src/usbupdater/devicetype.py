"""Device type (production or CI) from the device certificate, as aktualizr-lite decides it.

aktualizr-lite (foundriesio/aktualizr-lite `src/liteclient.cc`, `LiteClient::getClientType`)
calls a device "production" when its client certificate's subject `businessCategory` is
"production", CI for any other or no value, and undefined when there is no certificate. Foundries'
registration puts that attribute in the CSR only for production devices (foundriesio/
lmp-device-register `src/openssl.cpp`, `opt.production` -> `LN_businessCategory`). The
certificate file is aktualizr's `[import] tls_clientcert_path`, resolved against `[import]
base_path` when relative (foundriesio/aktualizr `include/libaktualizr/config.h` ImportConfig,
`utils::BasedPath::get` -> `Utils::absolutePath`); LmP's registration sets it to
`/var/sota/client.pem` (foundriesio/factory-registration-ref `registration_ref/sota_toml.py`).

`decide` is pure; `read_certificate` is the file adapter (bounded size, `cryptography`'s parser).
An explicit `[usbupdater] device_type` always wins; an unreadable certificate keeps the type
unknown (""), which is today's behaviour: CI roots and no bundle type check.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PRODUCTION = "production"
DEFAULT_CLIENT_CERT = Path("/var/sota/client.pem")  # what LmP's sota.toml sets
NO_FILE = "no such file"
MAX_CERT_BYTES = 64 * 1024  # a PEM client certificate is about 1 KiB; a chain a few


@dataclass(frozen=True)
class CertReading:
    """What reading the device certificate gave.

    `path` None: no certificate is configured (key set to ""). `categories` None: the file could
    not be read or parsed (`error` says why); otherwise the subject's businessCategory values.
    """

    path: Optional[Path]
    categories: Optional[tuple[str, ...]] = None
    error: str = ""


@dataclass(frozen=True)
class DeviceType:
    value: str  # "ci", "prod" or "" (unknown)
    reason: str  # one line for the log: where the value came from
    # "config", "certificate", "none" (no certificate) or "unreadable" (one that is not usable)
    source: str = "none"


def decide(configured: str, reading: Optional[CertReading]) -> DeviceType:
    """The device type from the configured value, else from the certificate reading."""
    if configured:
        return DeviceType(configured, "set by [usbupdater] device_type", "config")
    if reading is None or reading.path is None:
        return DeviceType("", "no device certificate configured ([import] tls_clientcert_path)")
    if reading.categories is None:
        why = f"device certificate {reading.path} not usable: {reading.error}"
        return DeviceType("", why, "none" if reading.error == NO_FILE else "unreadable")
    # aktualizr reads the first businessCategory entry of the subject.
    first = reading.categories[0] if reading.categories else None
    if first == PRODUCTION:
        why = f"device certificate {reading.path}: businessCategory=production"
        return DeviceType("prod", why, "certificate")
    shown = "absent" if first is None else f"{first!r}"
    return DeviceType(
        "ci", f"device certificate {reading.path}: businessCategory {shown}", "certificate"
    )


def cert_path(base_path: Path, tls_clientcert_path: Optional[str]) -> Optional[Path]:
    """The certificate file aktualizr imports: None when the key is set empty (e.g. PKCS#11)."""
    raw = str(DEFAULT_CLIENT_CERT) if tls_clientcert_path is None else tls_clientcert_path
    if not raw.strip():
        return None
    p = Path(raw)
    # Utils::absolutePath: an absolute path, or an empty base, leaves the path as given.
    return p if p.is_absolute() or not str(base_path) else base_path / p


def business_categories(pem: bytes) -> tuple[str, ...]:
    """The subject's businessCategory values of the first PEM certificate (ValueError if bad)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    values = cert.subject.get_attributes_for_oid(NameOID.BUSINESS_CATEGORY)
    return tuple(v.value if isinstance(v.value, str) else v.value.decode() for v in values)


def read_certificate(path: Optional[Path], max_bytes: int = MAX_CERT_BYTES) -> CertReading:
    """Read and parse the certificate at `path`; never raises."""
    if path is None:
        return CertReading(None)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return CertReading(path, None, "not a regular file")
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        return CertReading(path, None, NO_FILE)
    except OSError as exc:
        return CertReading(path, None, exc.strerror or type(exc).__name__)
    if len(data) > max_bytes:
        return CertReading(path, None, f"larger than {max_bytes} bytes")
    try:
        return CertReading(path, business_categories(data))
    except (ValueError, UnicodeDecodeError):
        return CertReading(path, None, "not a PEM X.509 certificate")


def resolve(configured: str, base_path: Path, tls_clientcert_path: Optional[str]) -> DeviceType:
    """`decide` over the certificate aktualizr would import (read only when needed)."""
    if configured:
        return decide(configured, None)
    return decide("", read_certificate(cert_path(base_path, tls_clientcert_path)))
