"""Sign metadata exactly like Foundries' ota-tuf server, for tests and the demo.

Output dialect: capitalised `_type`, signatures `{"keyid","method","sig"}` with base64 `sig`, keys
`{"keytype":"ED25519","keyval":{"public":hex}}` or `{"keytype":"RSA","keyval":{"public":PEM}}`,
key ids sha256(SubjectPublicKeyInfo DER), every file canonical compact sorted JSON without a
trailing newline. Everything is a plain dict or bytes, so a test can break any part of it (edit
`signed` without re-signing, sign with the wrong key, lower a version) with ordinary code.

Typical use (a bundle factory)::

    repo = Repo.generate()                       # root v1 + v2 (as a device ships them)
    repo.write_device_roots(uptane / "ci")       # 1.root.json, 2.root.json
    repo.rotate_root()                           # v3: new root key, signed by old and new
    repo.write_bundle_tuf(dst / "tuf", {name: ostree_target(commit, "42", ["hw"], ["main"])},
                          bundle=BundleInfo("ci", "main", [name]), expires=...)
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from usbupdater.trust.dialect import canonical, format_time

ROLES = ("root", "timestamp", "snapshot", "targets")
PrivateKey = Union[ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey]


@dataclass(frozen=True)
class SigningKey:
    """A key pair; `keyid` is ota-tuf's sha256(SPKI DER) unless a test chooses another label."""

    keyid: str
    keytype: str  # "ED25519" | "RSA"
    public: str  # hex (ED25519) or PEM (RSA)
    private: PrivateKey = field(repr=False, compare=False)
    method: str = ""  # signature method written; default from the key type

    @classmethod
    def ed25519(cls) -> SigningKey:
        return cls._from_private(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def rsa(cls, bits: int = 2048) -> SigningKey:
        return cls._from_private(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def _from_private(cls, private: PrivateKey) -> SigningKey:
        pub = private.public_key()
        der = pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keyid = hashlib.sha256(der).hexdigest()
        if isinstance(private, ed25519.Ed25519PrivateKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return cls(keyid, "ED25519", raw.hex(), private, "ed25519")
        pem = pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        return cls(keyid, "RSA", pem, private, "rsassa-pss-sha256")

    def public_dict(self) -> dict[str, Any]:
        return {"keytype": self.keytype, "keyval": {"public": self.public}}

    def sign_bytes(self, payload: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(payload)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return self.private.sign(payload, pss, hashes.SHA256())

    def signature(self, signed: Mapping[str, Any]) -> dict[str, str]:
        sig = base64.b64encode(self.sign_bytes(canonical(signed))).decode()
        return {"keyid": self.keyid, "method": self.method, "sig": sig}


def sign(signed: Mapping[str, Any], keys: Iterable[SigningKey]) -> dict[str, Any]:
    """A whole metadata document: `signed` plus one signature per key."""
    return {"signatures": [k.signature(signed) for k in keys], "signed": dict(signed)}


def dump(doc: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a document, as ota-tuf serves it (no trailing newline)."""
    return canonical(doc)


def edit(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """Apply `change` to the `signed` of a file WITHOUT re-signing: a tampered file."""
    doc = json.loads(data)
    change(doc["signed"])
    return dump(doc)


def resign(data: bytes, keys: Iterable[SigningKey], *, append: bool = False) -> bytes:
    """Replace (or extend) a file's signatures with signatures by `keys`."""
    doc = json.loads(data)
    new = [k.signature(doc["signed"]) for k in keys]
    doc["signatures"] = [*doc["signatures"], *new] if append else new
    return dump(doc)


def meta_entry(data: bytes, version: int) -> dict[str, Any]:
    return {
        "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
        "length": len(data),
        "version": version,
    }


def ostree_target(
    commit: str,
    version: str,
    hardware_ids: Sequence[str],
    tags: Sequence[str],
    apps: Mapping[str, str] | None = None,
    **custom: Any,
) -> dict[str, Any]:
    """A targets.json entry as Foundries writes one for an OSTree target (apps: name -> uri)."""
    entry_custom: dict[str, Any] = {
        "targetFormat": "OSTREE",
        "version": version,
        "hardwareIds": list(hardware_ids),
        "tags": list(tags),
        "createdAt": "2024-01-01T00:00:00Z",
        "updatedAt": "2024-01-01T00:00:00Z",
    }
    if apps is not None:
        entry_custom["docker_compose_apps"] = {a: {"uri": u} for a, u in apps.items()}
    entry_custom.update(custom)
    return {"hashes": {"sha256": commit}, "length": 0, "custom": entry_custom}


@dataclass(frozen=True)
class BundleInfo:
    """What bundle-targets.json says: device type, tag and the target names of the bundle."""

    type: str  # "ci" | "prod"
    tag: str
    targets: Sequence[str]


def _default_expires() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)


class Repo:
    """A factory's TUF repository: role keys, the root history, and bundle metadata."""

    def __init__(
        self,
        keys: Mapping[str, Sequence[SigningKey]],
        *,
        thresholds: Mapping[str, int] | None = None,
        expires: datetime | None = None,
        root_versions: int = 2,
    ) -> None:
        """Create root v1 (then rotate to `root_versions`, as ota-lite's v2 takes keys online)."""
        self.keys: dict[str, list[SigningKey]] = {r: list(keys[r]) for r in ROLES}
        self.thresholds: dict[str, int] = {r: 1 for r in ROLES}
        self.thresholds.update(thresholds or {})
        self.expires = expires or _default_expires()
        self.roots: list[dict[str, Any]] = []
        self.roots.append(sign(self._root_signed(1, self.expires, None), self.keys["root"]))
        for _ in range(root_versions - 1):
            self.rotate_root(keys={r: [SigningKey.ed25519()] for r in ROLES if r != "root"})

    @classmethod
    def generate(
        cls, *, rsa_root: bool = False, expires: datetime | None = None, root_versions: int = 2
    ) -> Repo:
        """A repo with fresh ED25519 keys (an RSA root key when `rsa_root`)."""
        keys = {r: [SigningKey.ed25519()] for r in ROLES}
        if rsa_root:
            keys["root"] = [SigningKey.rsa()]
        return cls(keys, expires=expires, root_versions=root_versions)

    @property
    def root_version(self) -> int:
        return len(self.roots)

    def _root_signed(
        self, version: int, expires: datetime, extra: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        all_keys = {k.keyid: k.public_dict() for r in ROLES for k in self.keys[r]}
        signed: dict[str, Any] = {
            "_type": "Root",
            "consistent_snapshot": False,
            "expires": format_time(expires),
            "keys": all_keys,
            "roles": {
                r: {"keyids": [k.keyid for k in self.keys[r]], "threshold": self.thresholds[r]}
                for r in ROLES
            },
            "version": version,
        }
        signed.update(extra or {})
        return signed

    def rotate_root(
        self,
        *,
        keys: Mapping[str, Sequence[SigningKey]] | None = None,
        thresholds: Mapping[str, int] | None = None,
        expires: datetime | None = None,
        signers: Sequence[SigningKey] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append root v(N+1) with the given role keys (default: a new root key).

        Signed by the previous root keys and the new ones, unless `signers` says otherwise.
        """
        old_root_keys = list(self.keys["root"])
        if keys is None:
            keys = {"root": [SigningKey.ed25519()]}
        for role, ks in keys.items():
            self.keys[role] = list(ks)
        self.thresholds.update(thresholds or {})
        version = self.root_version + 1
        signed = self._root_signed(version, expires or self.expires, extra)
        if signers is None:
            seen = {k.keyid: k for k in [*old_root_keys, *self.keys["root"]]}
            signers = list(seen.values())
        doc = sign(signed, signers)
        self.roots.append(doc)
        return doc

    def root_bytes(self, version: int) -> bytes:
        return dump(self.roots[version - 1])

    def write_device_roots(self, directory: Path, up_to: int = 2) -> None:
        """Write `1.root.json..up_to.root.json`: the roots a device ships (`<uptane>/ci/`)."""
        directory.mkdir(parents=True, exist_ok=True)
        for v in range(1, up_to + 1):
            (directory / f"{v}.root.json").write_bytes(self.root_bytes(v))

    def sign_role(
        self, role: str, signed: Mapping[str, Any], keys: Sequence[SigningKey] | None = None
    ) -> bytes:
        return dump(sign(signed, self.keys[role] if keys is None else keys))

    def targets_bytes(
        self,
        targets: Mapping[str, Mapping[str, Any]],
        *,
        version: int,
        expires: datetime,
        keys: Sequence[SigningKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Targets",
            "expires": format_time(expires),
            "targets": copy.deepcopy(dict(targets)),
            "version": version,
        }
        return self.sign_role("targets", signed, keys)

    def snapshot_bytes(
        self,
        targets_data: bytes,
        *,
        version: int,
        targets_version: int,
        expires: datetime,
        keys: Sequence[SigningKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Snapshot",
            "expires": format_time(expires),
            "meta": {
                "root.json": meta_entry(self.root_bytes(self.root_version), self.root_version),
                "targets.json": meta_entry(targets_data, targets_version),
            },
            "version": version,
        }
        return self.sign_role("snapshot", signed, keys)

    def timestamp_bytes(
        self,
        snapshot_data: bytes,
        *,
        version: int,
        snapshot_version: int,
        expires: datetime,
        keys: Sequence[SigningKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Timestamp",
            "expires": format_time(expires),
            "meta": {"snapshot.json": meta_entry(snapshot_data, snapshot_version)},
            "version": version,
        }
        return self.sign_role("timestamp", signed, keys)

    def bundle_targets_bytes(
        self,
        bundle: BundleInfo,
        *,
        version: int,
        expires: datetime,
        keys: Sequence[SigningKey] | None = None,
    ) -> bytes:
        signed = {
            "_type": "Targets",
            "expires": format_time(expires),
            "version": version,
            "x-fio-offline-bundle": {
                "type": bundle.type,
                "tag": bundle.tag,
                "targets": list(bundle.targets),
            },
        }
        return self.sign_role("targets", signed, keys)

    def bundle_files(
        self,
        targets: Mapping[str, Mapping[str, Any]],
        *,
        version: int = 1,
        expires: datetime | None = None,
        bundle: BundleInfo | None = None,
        first_root: int = 3,
        versions: Mapping[str, int] | None = None,
        role_expires: Mapping[str, datetime] | None = None,
    ) -> dict[str, bytes]:
        """Every file of `<bundle>/tuf/` by name: roots from `first_root`, the top-level roles
        (all at `version` unless `versions` says otherwise) and bundle-targets.json."""
        exp = expires or self.expires
        ver = {r: version for r in ("timestamp", "snapshot", "targets", "bundle-targets")}
        ver.update(versions or {})
        when = {r: exp for r in ver}
        when.update(role_expires or {})
        files = {
            f"{v}.root.json": self.root_bytes(v) for v in range(first_root, self.root_version + 1)
        }
        t = self.targets_bytes(targets, version=ver["targets"], expires=when["targets"])
        s = self.snapshot_bytes(
            t, version=ver["snapshot"], targets_version=ver["targets"], expires=when["snapshot"]
        )
        ts = self.timestamp_bytes(
            s, version=ver["timestamp"], snapshot_version=ver["snapshot"], expires=when["timestamp"]
        )
        files.update({"targets.json": t, "snapshot.json": s, "timestamp.json": ts})
        if bundle is not None:
            files["bundle-targets.json"] = self.bundle_targets_bytes(
                bundle, version=ver["bundle-targets"], expires=when["bundle-targets"]
            )
        return files

    def write_bundle_tuf(
        self, dst_tuf_dir: Path, targets: Mapping[str, Mapping[str, Any]], **kwargs: Any
    ) -> dict[str, bytes]:
        """Write `bundle_files(targets, **kwargs)` into `dst_tuf_dir` and return them."""
        files = self.bundle_files(targets, **kwargs)
        write_files(dst_tuf_dir, files)
        return files


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
