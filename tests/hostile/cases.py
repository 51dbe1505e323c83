"""The hostile-stick corpus as data: each case breaks a copy of the good bundle in one way.

Exit codes (spec section 4): 8 content missing, 11 TUF security, 12 expired, 14 metadata
missing, 15 bundle metadata invalid, 6 no target for the device, 80 content verification failed.
Where two codes could fit, the first one given is the spec's reading and `alt` lists the other
one accepted (both are refusals that leave the device unchanged):
- a piece that is absent (or renamed) is 14 under tuf/ and 8 for content;
- a piece that is there but not a plain file or directory (symlink, FIFO, device, socket, the
  wrong kind): under tuf/ it is tampering, 11 (14 accepted: read as absent); the presence
  markers of content (an app's directory and `uri`, the commit object, `ostree_repo/`) count
  as absent, 8; a blob or ostree object named by verified metadata is content failing
  verification, 80 (8 accepted);
- a metadata file that is present but wrong (bad JSON, too big, wrong hash, wrong type, bad
  signature) is 11, never 15: 15 is kept for bundle-targets.json as the spec says;
- content that is present but does not hash, parse or pass the member policy is 80.
`check` reports the same refusal as `install` unless a case says otherwise: both select and
verify the apps; the ostree objects are only verified by `install`'s pull, so for a broken
object `check` may say 16 (install available).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from tests.hostile.conftest import GOOD_VERSION, TRUSTED_VERSION, Corpus
from usbupdater.sim import hostile as H
from usbupdater.sim.apps import WrittenApp, blob_path, corrupt_blob
from usbupdater.sim.signer import BundleInfo, SigningKey, dump, edit, meta_entry, sign
from usbupdater.trust.dialect import format_time

Make = Callable[[Corpus, Path], None]
METADATA_CODES = frozenset({11, 12, 14, 15})


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    make: Make
    install: int  # the code the spec asks for
    alt: tuple[int, ...] = ()  # other codes accepted where the spec leaves the choice open
    check: Optional[tuple[int, ...]] = None  # codes accepted from `check`; default: install's
    ignored: bool = False  # the service sees no bundle (no readable tuf/targets.json)
    size_mb: int = 96
    notes: str = ""

    @property
    def install_codes(self) -> tuple[int, ...]:
        return (self.install, *self.alt)

    @property
    def check_codes(self) -> tuple[int, ...]:
        return self.install_codes if self.check is None else self.check


# --- where things are in a bundle --------------------------------------------------------------


def web(c: Corpus) -> WrittenApp:
    return c.factory.targets[c.v2].apps["web"]


def app_dir(c: Corpus, b: Path) -> Path:
    return b / "apps" / "apps" / "web" / web(c).manifest_digest.split(":")[1]


def layer(c: Corpus, b: Path) -> Path:
    return blob_path(b / "apps", web(c).images["main"].layer_digests[0])


def config_blob(c: Corpus, b: Path) -> Path:
    return blob_path(b / "apps", web(c).images["main"].config_digest)


def commit_obj(c: Corpus, b: Path) -> Path:
    commit = c.factory.targets[c.v2].commit
    return b / "ostree_repo" / "objects" / commit[:2] / f"{commit[2:]}.commit"


def objects(b: Path, suffix: str) -> list[Path]:
    return sorted((b / "ostree_repo" / "objects").rglob(f"*.{suffix}"), key=lambda p: p.name)


def file_obj(b: Path) -> Path:
    """The largest file object (the kernel-like content of the commit)."""
    return max(objects(b, "filez"), key=lambda p: (p.stat().st_size, p.name))


def ref_file(b: Path) -> Path:
    refs = sorted(p for p in (b / "ostree_repo" / "refs").rglob("*") if p.is_file())
    if refs:
        return refs[0]
    p = b / "ostree_repo" / "refs" / "heads" / "intel-corei7-64-lmp"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def tuf(b: Path, name: str) -> Path:
    return b / "tuf" / name


# --- re-signing --------------------------------------------------------------------------------


def chain(
    c: Corpus,
    b: Path,
    *,
    entries: Optional[Mapping[str, Mapping[str, Any]]] = None,
    keys: Optional[Mapping[str, list[SigningKey]]] = None,
    version: int = GOOD_VERSION,
    versions: Optional[Mapping[str, int]] = None,
    expires: Optional[Mapping[str, datetime]] = None,
    bundle: Optional[BundleInfo] = None,
    targets_signed: Optional[Callable[[dict[str, Any]], None]] = None,
    roots: Optional[Mapping[str, bytes]] = None,
) -> None:
    """Write a consistent, validly chained tuf/ (timestamp -> snapshot -> targets hashes agree)
    in which only the named things are wrong: signing keys, versions, expiry, content."""
    repo = c.factory.repo
    keys = dict(keys or {})
    ver = {r: version for r in ("timestamp", "snapshot", "targets", "bundle-targets")}
    ver.update(versions or {})
    far = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)
    exp = {r: far for r in ver}
    exp.update(expires or {})
    targets = {n: dict(t.entry) for n, t in c.factory.targets.items()}
    targets.update({n: dict(e) for n, e in (entries or {}).items()})
    t_signed: dict[str, Any] = {
        "_type": "Targets",
        "expires": format_time(exp["targets"]),
        "targets": targets,
        "version": ver["targets"],
    }
    if targets_signed is not None:
        targets_signed(t_signed)
    t = dump(sign(t_signed, keys.get("targets", repo.keys["targets"])))
    s_signed = {
        "_type": "Snapshot",
        "expires": format_time(exp["snapshot"]),
        "meta": {
            "root.json": meta_entry(repo.root_bytes(repo.root_version), repo.root_version),
            "targets.json": meta_entry(t, ver["targets"]),
        },
        "version": ver["snapshot"],
    }
    s = dump(sign(s_signed, keys.get("snapshot", repo.keys["snapshot"])))
    ts_signed = {
        "_type": "Timestamp",
        "expires": format_time(exp["timestamp"]),
        "meta": {"snapshot.json": meta_entry(s, ver["snapshot"])},
        "version": ver["timestamp"],
    }
    ts = dump(sign(ts_signed, keys.get("timestamp", repo.keys["timestamp"])))
    info = bundle or BundleInfo("ci", c.factory.tag, [c.v2])
    bt = repo.bundle_targets_bytes(
        info,
        version=ver["bundle-targets"],
        expires=exp["bundle-targets"],
        keys=keys.get("bundle-targets"),
    )
    H.remove(b / "tuf")
    (b / "tuf").mkdir()
    files = {
        "targets.json": t,
        "snapshot.json": s,
        "timestamp.json": ts,
        "bundle-targets.json": bt,
        **(roots or {}),
    }
    for name, data in files.items():
        (b / "tuf" / name).write_bytes(data)


def entry(c: Corpus, change: Callable[[dict[str, Any]], None]) -> dict[str, dict[str, Any]]:
    e = json.loads(json.dumps(c.factory.targets[c.v2].entry))
    change(e)
    return {c.v2: e}


def root_v3(c: Corpus, change: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
    """A 3.root.json signed by the current root keys, with `change` applied."""
    doc = json.loads(c.factory.repo.root_bytes(c.factory.repo.root_version))
    signed = doc["signed"]
    signed["version"] = c.factory.repo.root_version + 1
    change(signed)
    return {f"{signed['version']}.root.json": dump(sign(signed, c.factory.repo.keys["root"]))}


def hostile_app(c: Corpus, b: Path, parts: H.AppParts) -> H.BuiltApp:
    """Replace the bundle's app by one built from `parts` and sign a targets.json pinning it."""
    H.remove(b / "apps")
    built = H.write_app(b / "apps", parts)
    chain(c, b, entries={c.v2: H.with_apps(c.factory.targets[c.v2].entry, {"web": built.uri})})
    return built


def signed_app(**kw: Any) -> Make:
    return lambda c, b: (hostile_app(c, b, H.AppParts(**kw)), None)[1]


def tgz_members(extra: Callable[[bytes], list[H.Member]]) -> Make:
    """A signed app whose compose bundle holds docker-compose.yml plus `extra` members."""

    def members(compose: bytes) -> list[H.Member]:
        return [(H.tarinfo("docker-compose.yml", len(compose)), compose), *extra(compose)]

    return signed_app(members=members)


def lnk(name: str, to: str, kind: bytes = tarfile.SYMTYPE) -> H.Member:
    return (H.tarinfo(name, kind=kind, linkname=to, mode=0o777), b"")


def reg(name: str, data: bytes = b"x\n") -> H.Member:
    return (H.tarinfo(name, len(data)), data)


# --- filesystem tricks -------------------------------------------------------------------------


def at(where: Callable[[Corpus, Path], Path], how: Callable[[Corpus, Path, Path], None]) -> Make:
    return lambda c, b: how(c, b, where(c, b))


def to_outside(c: Corpus, b: Path, p: Path) -> None:
    """A symlink to the same piece in a good bundle outside the stick (it must not be read)."""
    H.symlink(p, c.outside / p.relative_to(b))


def to_secret(c: Corpus, b: Path, p: Path) -> None:
    H.symlink(p, c.secret_file)


def to_fifo(c: Corpus, b: Path, p: Path) -> None:
    H.fifo(p)


def to_chardev(c: Corpus, b: Path, p: Path) -> None:
    H.chardev(p)


def to_socket(c: Corpus, b: Path, p: Path) -> None:
    H.socket_node(p)


def to_dir(c: Corpus, b: Path, p: Path) -> None:
    H.directory(p)


def to_deep(c: Corpus, b: Path, p: Path) -> None:
    H.directory(p, depth=1500)


def to_file(c: Corpus, b: Path, p: Path) -> None:
    H.remove(p)
    p.write_bytes(b"not a directory\n")


def to_sparse(c: Corpus, b: Path, p: Path) -> None:
    H.sparse(p, 8 << 30)


def gone(c: Corpus, b: Path, p: Path) -> None:
    H.remove(p)


def path(rel: str) -> Callable[[Corpus, Path], Path]:
    return lambda c, b: b / rel


def hardlink_layer_to_config(c: Corpus, b: Path) -> None:
    lp, cp = layer(c, b), config_blob(c, b)
    lp.unlink()
    os.link(cp, lp)


def rename_app_dir(new: bytes) -> Make:
    def make(c: Corpus, b: Path) -> None:
        H.rename_bytes(b / "apps" / "apps" / "web", new)

    return make


def rename_tuf_file(name: str, new: bytes) -> Make:
    return lambda c, b: (H.rename_bytes(tuf(b, name), new), None)[1]


def huge_listing_blobs(c: Corpus, b: Path) -> None:
    H.many_files(b / "apps" / "blobs" / "sha256", 5000)
    layer(c, b).unlink()


def huge_listing_tuf(c: Corpus, b: Path) -> None:
    H.many_files(b / "tuf", 5000, prefix="9")
    p = tuf(b, "targets.json")
    p.write_bytes(edit(p.read_bytes(), lambda s: s.update(version=GOOD_VERSION + 1)))


OCHECK = (16, 8, 80)  # `check` does not run ostree: 16 until it checks the repo itself

FS: list[Case] = [
    Case("tuf-dir-symlink", "fs", at(path("tuf"), to_outside), 11, (14,), ignored=True),
    Case(
        "targets-json-symlink",
        "fs",
        at(path("tuf/targets.json"), to_outside),
        11,
        (14,),
        ignored=True,
    ),
    Case("timestamp-json-symlink", "fs", at(path("tuf/timestamp.json"), to_outside), 11, (14,)),
    Case("apps-dir-symlink", "fs", at(path("apps"), to_outside), 8),
    Case("app-dir-symlink", "fs", at(path("apps/apps/web"), to_outside), 8),
    Case("blobs-dir-symlink", "fs", at(path("apps/blobs"), to_outside), 80, (8,)),
    Case("blob-file-symlink", "fs", at(layer, to_outside), 80, (8,)),
    Case("ostree-repo-symlink", "fs", at(path("ostree_repo"), to_outside), 8),
    # ostree would print the first line of the file a symlinked config points to.
    Case(
        "ostree-config-secret",
        "fs",
        at(path("ostree_repo/config"), to_secret),
        8,
        (80,),
        check=OCHECK,
    ),
    Case(
        "ostree-ref-secret", "fs", at(lambda c, b: ref_file(b), to_secret), 8, (80,), check=OCHECK
    ),
    Case("ostree-commit-symlink", "fs", at(commit_obj, to_outside), 8),
    Case("targets-json-fifo", "fs", at(path("tuf/targets.json"), to_fifo), 11, (14,), ignored=True),
    Case("timestamp-json-fifo", "fs", at(path("tuf/timestamp.json"), to_fifo), 11, (14,)),
    Case("app-uri-fifo", "fs", at(lambda c, b: app_dir(c, b) / "uri", to_fifo), 8),
    Case("blob-fifo", "fs", at(layer, to_fifo), 80, (8,)),
    Case(
        "ostree-config-fifo",
        "fs",
        at(path("ostree_repo/config"), to_fifo),
        8,
        (80,),
        check=OCHECK,
    ),
    Case("ostree-commit-fifo", "fs", at(commit_obj, to_fifo), 8),
    Case(
        "ostree-file-object-fifo",
        "fs",
        at(lambda c, b: file_obj(b), to_fifo),
        8,
        (80,),
        check=OCHECK,
    ),
    Case(
        "ostree-ref-fifo",
        "fs",
        at(lambda c, b: ref_file(b), to_fifo),
        8,
        (80,),
        check=OCHECK,
    ),
    Case("snapshot-json-chardev", "fs", at(path("tuf/snapshot.json"), to_chardev), 11, (14,)),
    Case("blob-chardev", "fs", at(layer, to_chardev), 80, (8,)),
    Case(
        "ostree-file-object-chardev",
        "fs",
        at(lambda c, b: file_obj(b), to_chardev),
        8,
        (80,),
        check=OCHECK,
    ),
    Case(
        "targets-json-socket",
        "fs",
        at(path("tuf/targets.json"), to_socket),
        11,
        (14,),
        ignored=True,
    ),
    Case(
        "targets-json-is-dir", "fs", at(path("tuf/targets.json"), to_dir), 11, (14,), ignored=True
    ),
    Case("blob-is-dir", "fs", at(layer, to_dir), 80, (8,)),
    Case(
        "ostree-config-is-dir", "fs", at(path("ostree_repo/config"), to_dir), 8, (80,), check=OCHECK
    ),
    Case("blobs-dir-is-file", "fs", at(path("apps/blobs"), to_file), 80, (8,)),
    Case("tuf-dir-is-file", "fs", at(path("tuf"), to_file), 11, (14,), ignored=True),
    Case("ostree-objects-is-file", "fs", at(path("ostree_repo/objects"), to_file), 8),
    # A hard link is harmless in itself: here it gives the layer the config's bytes.
    Case("blob-hardlink-to-other", "fs", hardlink_layer_to_config, 80),
    Case("app-dir-name-control", "fs", rename_app_dir(b"web\x1b]0;owned\x07\x1b[2J"), 8),
    Case("app-dir-name-bad-utf8", "fs", rename_app_dir(b"web\xff\xfe"), 8),
    Case("app-dir-name-long", "fs", rename_app_dir(b"w" * 255), 8),
    Case("tuf-name-newline", "fs", rename_tuf_file("timestamp.json", b"timestamp.json\n"), 14),
    Case(
        "targets-json-deep-dir",
        "fs",
        at(path("tuf/targets.json"), to_deep),
        11,
        (14,),
        ignored=True,
    ),
    Case("blob-deep-dir", "fs", at(layer, to_deep), 80, (8,)),
    Case("blobs-huge-listing", "fs", huge_listing_blobs, 8),
    Case("tuf-huge-listing", "fs", huge_listing_tuf, 11),
    Case("layer-sparse-8g", "fs", at(layer, to_sparse), 80),
    # Longer than the snapshot says (and than any targets.json may be).
    Case("targets-json-sparse-8g", "fs", at(path("tuf/targets.json"), to_sparse), 11),
    Case(
        "ostree-object-sparse-8g", "fs", at(lambda c, b: file_obj(b), to_sparse), 80, check=(16, 80)
    ),
]


# --- TUF ---------------------------------------------------------------------------------------


def tamper(name: str, change: Callable[[dict[str, Any]], None]) -> Make:
    """Edit a role's `signed` without re-signing."""

    def make(c: Corpus, b: Path) -> None:
        p = tuf(b, name)
        p.write_bytes(edit(p.read_bytes(), change))

    return make


def raw(name: str, data: Callable[[Corpus, Path], bytes]) -> Make:
    def make(c: Corpus, b: Path) -> None:
        tuf(b, name).write_bytes(data(c, b))

    return make


def resigned(**kw: Any) -> Make:
    return lambda c, b: chain(c, b, **kw)


def other_keys(*roles: str) -> Callable[[Corpus, Path], None]:
    return lambda c, b: chain(c, b, keys={r: [SigningKey.ed25519()] for r in roles})


def corrupt_sig(name: str) -> Make:
    def make(c: Corpus, b: Path) -> None:
        p = tuf(b, name)
        doc = json.loads(p.read_bytes())
        sig = doc["signatures"][0]["sig"]
        doc["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
        p.write_bytes(dump(doc))

    return make


def threshold_two(c: Corpus, b: Path, *, twice: bool = False) -> None:
    """Root v3 asks two targets keys; bundle-targets.json has both, targets.json one (or the
    same one twice)."""
    k2 = SigningKey.ed25519()

    def change(s: dict[str, Any]) -> None:
        s["keys"][k2.keyid] = k2.public_dict()
        s["roles"]["targets"]["keyids"].append(k2.keyid)
        s["roles"]["targets"]["threshold"] = 2

    k1 = c.factory.repo.keys["targets"]
    chain(c, b, roots=root_v3(c, change), keys={"bundle-targets": [*k1, k2]})
    if twice:
        p = tuf(b, "targets.json")
        doc = json.loads(p.read_bytes())
        doc["signatures"] = doc["signatures"] * 2
        p.write_bytes(dump(doc))
        rechain_around_targets(c, b, p.read_bytes())


def same_key_twice(c: Corpus, b: Path) -> None:
    threshold_two(c, b, twice=True)


def rechain_around_targets(c: Corpus, b: Path, t: bytes) -> None:
    repo = c.factory.repo
    exp = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=365)
    s = repo.snapshot_bytes(t, version=GOOD_VERSION, targets_version=GOOD_VERSION, expires=exp)
    ts = repo.timestamp_bytes(s, version=GOOD_VERSION, snapshot_version=GOOD_VERSION, expires=exp)
    tuf(b, "snapshot.json").write_bytes(s)
    tuf(b, "timestamp.json").write_bytes(ts)


def rollback(versions: Optional[dict[str, int]] = None) -> Make:
    def make(c: Corpus, b: Path) -> None:
        name = f"{c.factory.hardware_id}-lmp-99"
        e = json.loads(json.dumps(c.factory.targets[c.v2].entry))
        e["custom"]["version"] = "99"
        chain(
            c,
            b,
            entries={name: e},
            version=TRUSTED_VERSION - 10 if versions is None else GOOD_VERSION,
            versions=versions,
            bundle=BundleInfo("ci", c.factory.tag, [name]),
        )

    return make


def past() -> datetime:
    return datetime(2020, 1, 1, tzinfo=timezone.utc)


def big_targets(c: Corpus, b: Path) -> bytes:
    """About 16 MiB of well-formed targets (costly to model), matching no snapshot hash."""
    e = c.factory.targets[c.v2].entry
    targets = {f"filler-{i:06d}": e for i in range(16 << 10)}
    doc = json.loads(tuf(b, "targets.json").read_bytes())
    doc["signed"]["targets"].update(targets)
    data = dump(doc)
    return data[: 16 << 20] if len(data) > 16 << 20 else data


def junk_64m(c: Corpus, b: Path) -> bytes:
    return b'{"signed":{"version":' + b"[" * (64 << 20) + b"}}"


def deep_json(c: Corpus, b: Path) -> bytes:
    return b'{"signed":' + b"[" * 200_000 + b"]" * 200_000 + b',"signatures":[]}'


def huge_number(c: Corpus, b: Path) -> bytes:
    doc = json.loads(tuf(b, "timestamp.json").read_bytes())
    text = dump(doc).replace(
        f'"version":{GOOD_VERSION}'.encode(), b'"version":' + b"9" * 500_000, 1
    )
    return text


def duplicate_keys(c: Corpus, b: Path) -> bytes:
    data = tuf(b, "timestamp.json").read_bytes()
    return data.replace(b'"_type":"Timestamp"', b'"_type":"Timestamp","_type":"Root"', 1)


def nan_json(c: Corpus, b: Path) -> bytes:
    data = tuf(b, "timestamp.json").read_bytes()
    return data.replace(f'"version":{GOOD_VERSION}'.encode(), b'"version":NaN', 1)


def version_as_string(c: Corpus, b: Path) -> None:
    chain(c, b)
    p = tuf(b, "timestamp.json")
    doc = json.loads(p.read_bytes())
    doc["signed"]["version"] = str(GOOD_VERSION)
    p.write_bytes(dump(sign(doc["signed"], c.factory.repo.keys["timestamp"])))


def targets_as_list(s: dict[str, Any]) -> None:
    s["targets"] = list(s["targets"].values())


def mix_and_match(c: Corpus, b: Path) -> None:
    """A snapshot from an older bundle under the current timestamp."""
    older = c.work / "older-snapshot.json"
    if not older.exists():
        d = c.work / "older-b"
        d.mkdir(exist_ok=True)
        chain(c, d, version=GOOD_VERSION - 1)
        shutil.copy(tuf(d, "snapshot.json"), older)
    shutil.copy(older, tuf(b, "snapshot.json"))


TUF: list[Case] = [
    Case("timestamp-missing", "tuf", at(path("tuf/timestamp.json"), gone), 14),
    Case("snapshot-missing", "tuf", at(path("tuf/snapshot.json"), gone), 14),
    Case("targets-missing", "tuf", at(path("tuf/targets.json"), gone), 14, ignored=True),
    # (An absent bundle-targets.json is a legacy bundle, accepted; junk is not.)
    Case("bundle-targets-junk", "tuf", raw("bundle-targets.json", lambda c, b: b"{junk"), 15),
    Case("targets-tampered", "tuf", tamper("targets.json", lambda s: s.update(version=99)), 11),
    Case("targets-wrong-key", "tuf", other_keys("targets"), 11),
    Case("timestamp-wrong-key", "tuf", other_keys("timestamp"), 11),
    Case("snapshot-bad-signature", "tuf", corrupt_sig("snapshot.json"), 11),
    Case("bundle-targets-wrong-key", "tuf", other_keys("bundle-targets"), 15),
    Case("targets-threshold-2-one-sig", "tuf", threshold_two, 11),
    Case("targets-same-key-twice", "tuf", same_key_twice, 11),
    # Older metadata than the device's, naming a target only it has: the device keeps its
    # own metadata, in which that target does not exist (11, or 6: nothing for the device).
    Case("rollback-all-roles", "tuf", rollback(), 11, (6,)),
    Case("rollback-timestamp", "tuf", rollback({"timestamp": TRUSTED_VERSION - 1}), 11, (6,)),
    Case("snapshot-mix-and-match", "tuf", mix_and_match, 11),
    Case(
        "expired-all",
        "tuf",
        resigned(expires={r: past() for r in ("timestamp", "snapshot", "targets")}),
        12,
    ),
    Case("expired-timestamp", "tuf", resigned(expires={"timestamp": past()}), 12),
    Case("expired-bundle-targets", "tuf", resigned(expires={"bundle-targets": past()}), 15),
    Case("targets-16m-wrong-hash", "tuf", raw("targets.json", big_targets), 11, size_mb=160),
    Case(
        "targets-64m-junk",
        "tuf",
        raw("targets.json", junk_64m),
        11,
        size_mb=200,
    ),
    Case("timestamp-deep-nesting", "tuf", raw("timestamp.json", deep_json), 11),
    Case("timestamp-huge-number", "tuf", raw("timestamp.json", huge_number), 11),
    Case("timestamp-duplicate-keys", "tuf", raw("timestamp.json", duplicate_keys), 11),
    Case("timestamp-nan", "tuf", raw("timestamp.json", nan_json), 11),
    Case("timestamp-version-string", "tuf", version_as_string, 11),
    Case("targets-is-a-list", "tuf", resigned(targets_signed=targets_as_list), 11),
    Case(
        "wrong-hardware-id",
        "tuf",
        lambda c, b: chain(
            c, b, entries=entry(c, lambda e: e["custom"].update(hardwareIds=["other-board"]))
        ),
        6,
    ),
    Case(
        "wrong-tag",
        "tuf",
        lambda c, b: chain(c, b, entries=entry(c, lambda e: e["custom"].update(tags=["devel"]))),
        6,
    ),
    Case(
        "bundle-tag-mismatch",
        "tuf",
        lambda c, b: chain(c, b, bundle=BundleInfo("ci", "devel", [c.v2])),
        15,
    ),
    Case(
        "bundle-type-prod-on-ci",
        "tuf",
        lambda c, b: chain(c, b, bundle=BundleInfo("prod", c.factory.tag, [c.v2])),
        15,
    ),
    # The bundle names only a target that targets.json lacks: nothing in it is for the device.
    Case(
        "bundle-lists-unknown-target",
        "tuf",
        lambda c, b: chain(c, b, bundle=BundleInfo("ci", c.factory.tag, ["nope-lmp-99"])),
        6,
    ),
]


# --- apps --------------------------------------------------------------------------------------

MIB = 1 << 20


def multi_member_layer() -> tuple[bytes, str]:
    """A valid layer: a 4 MiB tar as two gzip members whose first ends exactly on 2 MiB."""
    size = 4 * MIB - 512 - 1024
    data = bytes((i * 7 + (i >> 12)) & 0xFF for i in range(256)) * (size // 256)
    t = H.tar([(H.tarinfo("data.bin", size), data)])
    assert len(t) == 4 * MIB
    return H.gz_members(t, [2 * MIB]), H.digest(t)


def truncated_layer() -> tuple[bytes, str]:
    """The first half of a gzip layer of incompressible bytes (its digest pins the half)."""
    t = H.tar([reg("noise", random.Random(7).randbytes(200_000))])
    blob = H.gz(t)
    return blob[: len(blob) // 2], H.digest(t)


def unsigned_layer(blob: Callable[[bytes], bytes]) -> Make:
    """Replace the layer blob's bytes, keeping its (now wrong) name."""

    def make(c: Corpus, b: Path) -> None:
        p = layer(c, b)
        p.write_bytes(blob(p.read_bytes()))

    return make


def bombs() -> list[tuple[bytes, str]]:
    blob, _ = H.gzip_bomb(512 << 20)
    return [(blob, H.digest(b"not the diff id"))]


def with_platforms(*archs: str) -> Make:
    return signed_app(platforms=list(archs))


def arch() -> str:
    from usbupdater.hostinfo import machine_arch

    return machine_arch()


def size_lie(m: dict[str, Any]) -> dict[str, Any]:
    m["layers"][0]["size"] += 1
    return m


def bundle_size_lie(m: dict[str, Any]) -> dict[str, Any]:
    m["layers"][0]["size"] -= 1
    return m


def header_bomb(c: Corpus, b: Path) -> None:
    """The stored tgz is a pax-header bomb and does not hash to its name."""
    tgz = next(app_dir(c, b).glob("*.tgz"))
    bomb = H.gz(H.pax_header_bomb())
    tgz.write_bytes(bomb)
    blob_path(b / "apps", web(c).bundle_digest).write_bytes(bomb)


def unpinned(compose: bytes, ref: str) -> bytes:
    return compose.replace(ref.encode(), ref.split("@")[0].encode() + b":latest")


def many_members(compose: bytes) -> list[H.Member]:
    return [(H.tarinfo(f"m/{i}"), b"") for i in range(100_000)]


def chain_links(compose: bytes) -> list[H.Member]:
    return [lnk("d", "."), lnk("d/e", ".."), lnk("e/f", ".."), reg("e/f/x")]


APPS: list[Case] = [
    Case(
        "layer-multi-member-unsigned",
        "apps",
        unsigned_layer(lambda _: multi_member_layer()[0]),
        80,
    ),
    Case("layer-truncated-unsigned", "apps", unsigned_layer(lambda d: d[: len(d) // 2]), 80),
    Case(
        "layer-truncated-signed",
        "apps",
        signed_app(layers=[truncated_layer()]),
        80,
    ),
    Case(
        "layer-gzip-bomb-512m",
        "apps",
        lambda c, b: signed_app(layers=bombs())(c, b),
        80,
    ),
    Case(
        "layer-wrong-diff-id",
        "apps",
        lambda c, b: signed_app(layers=[(H.layer_of([reg("a")])[0], H.digest(b"other"))])(c, b),
        80,
    ),
    Case(
        "layer-bit-flip",
        "apps",
        lambda c, b: corrupt_blob(b / "apps", web(c).images["main"].layer_digests[0]),
        80,
    ),
    Case("layer-size-lie", "apps", signed_app(manifest=size_lie), 80),
    Case("bundle-tgz-size-lie", "apps", signed_app(app_manifest=bundle_size_lie), 80),
    Case("layer-blob-missing", "apps", at(layer, gone), 8),
    Case("config-blob-missing", "apps", at(config_blob, gone), 8),
    Case(
        "app-manifest-blob-missing",
        "apps",
        lambda c, b: blob_path(b / "apps", web(c).manifest_digest).unlink(),
        8,
    ),
    # An image the device cannot run (no manifest for its platform, or two) fails verification.
    Case(
        "index-no-matching-platform",
        "apps",
        lambda c, b: with_platforms("s390x", "riscv64")(c, b),
        80,
    ),
    Case(
        "index-two-matching-platforms",
        "apps",
        lambda c, b: with_platforms(arch(), arch())(c, b),
        80,
    ),
    Case("tgz-symlink-chain", "apps", tgz_members(chain_links), 80),
    Case("tgz-absolute-symlink", "apps", tgz_members(lambda _: [lnk("etc", "/etc")]), 80),
    Case("tgz-dotdot-name", "apps", tgz_members(lambda _: [reg("../../x")]), 80),
    Case(
        "tgz-device-member",
        "apps",
        tgz_members(lambda _: [(H.tarinfo("zero", kind=tarfile.CHRTYPE), b"")]),
        80,
    ),
    Case(
        "tgz-duplicate-names",
        "apps",
        tgz_members(lambda c: [(H.tarinfo("docker-compose.yml", len(c)), c)]),
        80,
    ),
    Case(
        "tgz-hard-link",
        "apps",
        tgz_members(lambda _: [lnk("h", "docker-compose.yml", tarfile.LNKTYPE)]),
        80,
    ),
    Case("tgz-header-bomb-wrong-digest", "apps", header_bomb, 80),
    Case("tgz-100k-members", "apps", tgz_members(many_members), 80),
    Case("compose-not-digest-pinned", "apps", signed_app(compose=unpinned), 80),
    Case(
        "compose-yaml-bomb",
        "apps",
        signed_app(compose=lambda c, ref: H.yaml_bomb(ref)),
        80,
    ),
]


# --- ostree ------------------------------------------------------------------------------------


def flip_last_byte(c: Corpus, b: Path, p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def other_commit(c: Corpus, b: Path, p: Path) -> None:
    """The v2 commit object holds v1's commit: its name no longer matches its hash."""
    v1 = c.factory.targets[c.v1].commit
    src = c.factory.treehub / "objects" / v1[:2] / f"{v1[2:]}.commit"
    p.write_bytes(src.read_bytes())


def bare_config(c: Corpus, b: Path, p: Path) -> None:
    p.write_text(
        p.read_text().replace("mode=archive-z2", "mode=bare").replace("mode=archive", "mode=bare")
    )


def junk_config(c: Corpus, b: Path, p: Path) -> None:
    p.write_bytes(b"\x00\xff[core\n")


OSTREE: list[Case] = [
    # Only the pull verifies objects: `check` finds the commit present and says 16.
    Case(
        "ostree-file-object-corrupt",
        "ostree",
        at(lambda c, b: file_obj(b), flip_last_byte),
        80,
        check=(16, 80),
    ),
    Case(
        "ostree-file-object-missing", "ostree", at(lambda c, b: file_obj(b), gone), 8, check=(16, 8)
    ),
    Case("ostree-commit-missing", "ostree", at(commit_obj, gone), 8),
    Case(
        "ostree-commit-wrong-content",
        "ostree",
        at(commit_obj, other_commit),
        80,
        (8,),
        check=(16, 80, 8),
    ),
    Case(
        "ostree-dirtree-fifo",
        "ostree",
        at(lambda c, b: objects(b, "dirtree")[0], to_fifo),
        8,
        (80,),
        check=OCHECK,
    ),
    # A repo whose config says it is not an archive: ostree reads its objects wrongly; the
    # content cannot be had from the bundle.
    Case(
        "ostree-config-not-archive",
        "ostree",
        at(path("ostree_repo/config"), bare_config),
        8,
        (80,),
        check=OCHECK,
    ),
    Case(
        "ostree-config-junk",
        "ostree",
        at(path("ostree_repo/config"), junk_config),
        8,
        (80,),
        check=OCHECK,
    ),
]

ALL: list[Case] = [*FS, *TUF, *APPS, *OSTREE]
POSITIVE = Case(
    "layer-multi-member-1mib-boundary",
    "positive",
    lambda c, b: (hostile_app(c, b, H.AppParts(layers=[multi_member_layer()])), None)[1],
    100,
    check=(16,),
)


def by_name() -> dict[str, Case]:
    out = {c.name: c for c in ALL}
    assert len(out) == len(ALL), "case names must be unique"
    return out
