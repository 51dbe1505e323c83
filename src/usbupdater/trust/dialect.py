"""Foundries (ota-tuf / Uptane) metadata -> python-tuf's model, with signatures over the original.

python-tuf cannot read this dialect (capitalised `_type`, no `spec_version`/`scheme`, base64 `sig`,
`ED25519`/`RSA` key types, extra roles), and re-serialising a converted object would change the
signed bytes. So a *copy* of `signed` is normalised only to get python-tuf's structural checks
(types, thresholds, expiry parsing), while every signature is verified over the sorted compact JSON
of the ORIGINAL `signed` object, the way ota-tuf and aktualizr produce it. Key ids are opaque
labels looked up in the root, never recomputed (real Foundries roots use several derivations).

Every way a file can be bad (size, UTF-8, JSON, nesting, types) ends as a `SecurityError` (11)
naming the file: the file is present, so it is not "missing" (14), and a file that does not parse
cannot be trusted, which is what 11 means. Callers turn it into 15 for bundle-targets.json.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar, Union

# Both packages re-export these names without __all__, which strict mypy does not see.
from securesystemslib.signer import Key, Signature
from tuf.api.metadata import (
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from usbupdater import timefmt
from usbupdater.errors import SecurityError

MiB = 1024 * 1024
MAX_META_SIZE = 1 * MiB  # root, timestamp, snapshot, bundle-targets
MAX_TARGETS_SIZE = 16 * MiB  # targets.json grows with every target of the factory
MAX_DEPTH = 32  # real metadata nests about 8 deep; bounds every later walk of the tree
# A file whose raw bytes do not match what its parent declares is parsed (to try its canonical
# form, as aktualizr-lite hashes it) only up to this size; larger ones are refused unparsed.
CANONICAL_FALLBACK_MAX = 64 * 1024
# Bytes a file may exceed its declared length by (trailing whitespace, as in real vectors).
_TRAILING_SLACK = 4096
_WHITESPACE = b" \t\r\n"

ROLE_TYPES = ("root", "timestamp", "snapshot", "targets")
_SCHEMES = {"ed25519": "ed25519", "rsa": "rsassa-pss-sha256"}
# Signature `method` names that go with each key type; the verifier itself comes from the key.
_METHODS = {"ed25519": ("ed25519",), "rsa": ("rsassa-pss-sha256", "rsassa-pss")}
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}

SignedT = TypeVar("SignedT", Root, Timestamp, Snapshot, Targets)
AnySigned = Union[Root, Timestamp, Snapshot, Targets]
_MODELS: dict[str, type[AnySigned]] = {
    "root": Root,
    "timestamp": Timestamp,
    "snapshot": Snapshot,
    "targets": Targets,
}


def canonical(obj: Any) -> bytes:
    """Sorted compact JSON, strings JSON-escaped: the bytes ota-tuf and aktualizr sign and hash."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def parse_time(value: object) -> datetime:
    """An ISO 8601 UTC time as written in metadata (`2022-09-09T18:13:01Z`, fractions allowed)."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError(f"not a UTC time: {value!r}")
    body = value[:-1]
    if "." in body:  # Python 3.9's fromisoformat wants exactly 3 or 6 fraction digits
        head, frac = body.split(".", 1)
        body = f"{head}.{(frac + '000000')[:6]}"
    parsed = datetime.fromisoformat(body)
    if parsed.tzinfo is not None:
        raise ValueError(f"not a UTC time: {value!r}")
    return parsed.replace(tzinfo=timezone.utc)


def format_time(value: datetime) -> str:
    return timefmt.text(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate keys: two parsers must never see two different documents."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _check_depth(obj: Any, name: str) -> None:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SecurityError(f"{name}: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_json(data: bytes, name: str) -> Any:
    """Strict UTF-8 JSON with bounded nesting; every failure is a one-line `SecurityError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecurityError(f"{name}: not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise SecurityError(f"{name}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, over-long integers
        raise SecurityError(f"{name}: malformed JSON: {exc}") from None
    _check_depth(obj, name)
    return obj


@dataclass(frozen=True)
class RawSignature:
    keyid: str
    method: str | None
    sig: bytes | None  # None: not base64, can never verify


@dataclass(frozen=True)
class Envelope(Generic[SignedT]):
    """One parsed metadata file: the original `signed`, its signed bytes and the model view."""

    name: str  # file name, for messages
    role: str  # "root", "timestamp", ...
    doc: dict[str, Any]  # the whole original document
    payload: bytes  # canonical(original signed): what the signatures cover
    signatures: tuple[RawSignature, ...]
    model: SignedT

    @property
    def signed(self) -> dict[str, Any]:
        signed: dict[str, Any] = self.doc["signed"]
        return signed

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def expires(self) -> datetime:
        return self.model.expires

    @property
    def label(self) -> str:
        """`timestamp v875`: how every message names a role."""
        return f"{self.role} v{self.version}"


def _normalise_key(key: Any) -> dict[str, Any] | None:
    """ota-tuf key -> securesystemslib key dict; None for a key type we cannot use."""
    if not isinstance(key, dict) or not isinstance(key.get("keytype"), str):
        raise ValueError("key is not an object with a keytype")
    keytype = key["keytype"].lower()
    keyval = key.get("keyval")
    if keytype not in _SCHEMES:
        return None
    if not isinstance(keyval, dict) or not isinstance(keyval.get("public"), str):
        raise ValueError("key has no public value")
    return {"keytype": keytype, "scheme": _SCHEMES[keytype], "keyval": {"public": keyval["public"]}}


def _normalise(signed: dict[str, Any], role: str) -> dict[str, Any]:
    """A copy of `signed` in python-tuf's wire format (never used for signature checks)."""
    norm = copy.deepcopy(signed)
    kind = norm.get("_type")
    if not isinstance(kind, str) or kind.lower() != role:
        raise ValueError(f"_type is {kind!r}, expected {role.capitalize()!r}")
    norm["_type"] = role
    norm["spec_version"] = "1.0"
    version = norm.get("version")
    if type(version) is not int or version < 1:
        raise ValueError(f"version {version!r} is not a positive integer")
    norm["expires"] = format_time(parse_time(norm.get("expires")))
    if role == "root":
        keys = norm.get("keys")
        roles = norm.get("roles")
        if not isinstance(keys, dict) or not isinstance(roles, dict):
            raise ValueError("keys and roles must be objects")
        usable = {kid: _normalise_key(k) for kid, k in keys.items()}
        norm["keys"] = {kid: k for kid, k in usable.items() if k is not None}
        # Extra roles (aktualizr's "offline") are not ours to check; the four must be there.
        norm["roles"] = {r: v for r, v in roles.items() if r in ROLE_TYPES}
        for r, v in norm["roles"].items():
            if not isinstance(v, dict) or type(v.get("threshold")) is not int:
                raise ValueError(f"role {r} has no integer threshold")
    if role == "targets":
        norm.setdefault("targets", {})  # bundle-targets.json has none
        for name, entry in norm["targets"].items():
            if not isinstance(entry, dict) or type(entry.get("length")) is not int:
                raise ValueError(f"target {name!r} has no integer length")
    for meta in norm.get("meta", {}).values() if role in ("timestamp", "snapshot") else ():
        if not isinstance(meta, dict) or type(meta.get("version")) is not int:
            raise ValueError("meta entry has no integer version")
        if "length" in meta and type(meta["length"]) is not int:
            raise ValueError("meta entry length is not an integer")
    return norm


def _raw_signatures(doc: dict[str, Any]) -> tuple[RawSignature, ...]:
    sigs = doc.get("signatures")
    if not isinstance(sigs, list):
        raise ValueError("signatures is not a list")
    out = []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str):
            raise ValueError("a signature has no keyid")
        method = s.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("a signature method is not a string")
        raw = s.get("sig")
        if not isinstance(raw, str):
            raise ValueError("a signature has no sig string")
        try:
            sig: bytes | None = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            sig = None
        out.append(RawSignature(s["keyid"], method, sig))
    return tuple(out)


def load(data: bytes, role: str, name: str) -> Envelope[Any]:
    """Parse one metadata file of `role`; raise `SecurityError` naming `name` if it is unusable."""
    doc = parse_json(data, name)
    try:
        if not isinstance(doc, dict) or not isinstance(doc.get("signed"), dict):
            raise ValueError("not an object with a 'signed' object")
        signatures = _raw_signatures(doc)
        payload = canonical(doc["signed"])
        model = _MODELS[role].from_dict(_normalise(doc["signed"], role))
    except Exception as exc:  # python-tuf raises ValueError/KeyError/TypeError/AttributeError
        raise SecurityError(f"{name}: not valid {role} metadata: {_short(exc)}") from None
    return Envelope(name, role, doc, payload, signatures, model)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _method_fits(method: str | None, key: Key) -> bool:
    return method is None or method.lower() in _METHODS.get(key.keytype, ())


def valid_keyids(env: Envelope[Any], root: Root, role: str) -> set[str]:
    """Key ids of `role` in `root` that signed `env`; a key counts once however often it signs."""
    role_keyids = set(root.roles[role].keyids)
    valid: set[str] = set()
    for s in env.signatures:
        if s.keyid in valid or s.keyid not in role_keyids or s.sig is None:
            continue
        key = root.keys.get(s.keyid)
        if key is None or not _method_fits(s.method, key):
            continue
        try:
            key.verify_signature(Signature(s.keyid, s.sig.hex()), env.payload)
        except Exception:  # noqa: S112 - a bad key or signature simply does not count
            continue
        valid.add(s.keyid)
    return valid


def check_threshold(env: Envelope[Any], root: Root, role: str, signer: str) -> None:
    """Raise `SecurityError` unless a threshold of `role`'s keys in `root` signed `env`."""
    need = root.roles[role].threshold
    got = len(valid_keyids(env, root, role))
    if got < need:
        raise SecurityError(
            f"{env.label}: {got} valid signature(s) by the {role} keys of {signer}, {need} needed"
        )


def meta_read_limit(length: int | None, cap: int) -> int:
    """How many bytes to read at most for a file whose parent declares `length` (None: `cap`)."""
    if length is None:
        return cap
    return min(cap, max(length + _TRAILING_SLACK, CANONICAL_FALLBACK_MAX))


def precheck_meta(
    data: bytes, length: int | None, hashes: Mapping[str, str] | None
) -> tuple[bool, str | None]:
    """Check a file's raw bytes against its parent's declaration BEFORE parsing it.

    Returns (True, None) when the raw bytes (trailing whitespace aside) are what was declared, or
    nothing was declared: parse, no further check. (False, why) refuses the file unparsed.
    (False, None): the raw bytes differ but the file is small enough
    (`CANONICAL_FALLBACK_MAX`) to parse and try its canonical form with `check_meta`. So a stick
    can make us parse at most that much unauthenticated JSON, or what the signer declared.
    """
    known = {alg: h for alg, h in (hashes or {}).items() if alg in _HASHES}
    if hashes and not known:
        return False, f"no supported hash declared ({', '.join(sorted(hashes))})"
    stripped = data.rstrip(_WHITESPACE)
    for form in (data, stripped):
        if length is not None and len(form) != length:
            continue
        if all(_HASHES[alg](form).hexdigest() == want.lower() for alg, want in known.items()):
            return True, None
    if len(data) <= CANONICAL_FALLBACK_MAX:
        return False, None
    if length is not None and length not in (len(data), len(stripped)):
        return False, f"length {len(data)} does not match the {length} declared"
    return False, f"{'/'.join(sorted(known))} does not match the hash declared"


def check_meta(
    data: bytes, env: Envelope[Any], length: int | None, hashes: Mapping[str, str] | None
) -> str | None:
    """Check a file against its parent's declared length and hashes; return why not, or None.

    ota-tuf serves canonical JSON, and aktualizr-lite hashes the canonical form of the parsed file,
    not the bytes on disk (libtufnano's ed25519 set has a trailing newline the meta does not count).
    So the raw bytes or the canonical form must match: either one proves the content signed.
    """
    known = {alg: h for alg, h in (hashes or {}).items() if alg in _HASHES}
    if hashes and not known:
        return f"no supported hash declared ({', '.join(sorted(hashes))})"
    for form in (data, canonical(env.doc)):
        if length is not None and len(form) != length:
            continue
        if all(_HASHES[alg](form).hexdigest() == want.lower() for alg, want in known.items()):
            return None
    if length is not None and length not in (len(data), len(canonical(env.doc))):
        return f"length {len(data)} does not match the {length} declared"
    return f"{'/'.join(sorted(known))} does not match the hash declared"
