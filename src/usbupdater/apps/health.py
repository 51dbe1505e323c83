"""Has an app started? A pure decision over `docker inspect` data, as a user would judge it.

A service is started when each of its containers runs the expected image (see `runs_image`)
with the expected `io.compose-spec.config-hash` label and, when it has a healthcheck,
reports healthy. An exited/dead container, or one restarting (or restarted `max_restarts` times),
is a failure at once: waiting longer cannot fix it. Anything else (no container yet, health
"starting" or "unhealthy", another image) is "waiting", and becomes the failure reason only when
the caller's timeout expires, since Docker keeps re-running healthchecks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from usbupdater.apps.project import CONFIG_HASH_LABEL, SERVICE_LABEL

OK, WAITING, FAILED = "ok", "waiting", "failed"


@dataclass(frozen=True)
class ServiceExpectation:
    """What the verified compose file says a service must run.

    An engine names an image differently depending on its image store: the classic store
    (graphdrivers, Docker <= 28 by default) by its config digest, the containerd image store
    (Docker 24+ opt-in, default on fresh 29.x) by the digest of the manifest or index the image
    was created from (moby daemon/containerd/image_inspect.go: `ID: target.Digest`).
    `other_ids` are those digests of the verified image (engine.image_ids).
    """

    service: str
    image_id: str  # "sha256:<config hex>"
    config_hash: Optional[str]  # the compose label's value; None: not checked
    other_ids: frozenset[str] = frozenset()  # manifest / index digests naming the same image

    @property
    def image_ids(self) -> frozenset[str]:
        return self.other_ids | {self.image_id}


def runs_image(exp: ServiceExpectation, c: Mapping[str, Any]) -> bool:
    """Does a container (`docker inspect` data) run the verified image?

    `Image` is the image ID: the config digest on the classic store (Docker 20.10), the
    manifest or index digest on the containerd store. There, API 1.48+ (Docker 28+) also reports
    the platform manifest the container runs, `ImageManifestDescriptor`; when present it decides,
    since an index names several manifests and only the verified one may run. Each accepted
    digest covers the config and the layers, so a match means the verified content.
    """
    ids = exp.image_ids
    desc = c.get("ImageManifestDescriptor")
    if isinstance(desc, Mapping) and desc.get("digest"):
        return desc.get("digest") in ids
    return c.get("Image") in ids


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    state: str  # OK | WAITING | FAILED
    reason: str = ""
    container_id: Optional[str] = None  # the container the reason is about (for its logs)


@dataclass(frozen=True)
class Verdict:
    services: tuple[ServiceStatus, ...]

    @property
    def ok(self) -> bool:
        return all(s.state == OK for s in self.services)

    @property
    def failed(self) -> Optional[ServiceStatus]:
        return next((s for s in self.services if s.state == FAILED), None)

    @property
    def waiting(self) -> Optional[ServiceStatus]:
        return next((s for s in self.services if s.state == WAITING), None)


def _labels(c: Mapping[str, Any]) -> Mapping[str, str]:
    return (c.get("Config") or {}).get("Labels") or {}


def container_status(
    exp: ServiceExpectation, c: Mapping[str, Any], max_restarts: int = 1
) -> ServiceStatus:
    """One container against its service's expectation."""
    cid = str(c.get("Id", ""))
    state = c.get("State") or {}
    status = str(state.get("Status", ""))
    restarts = int(c.get("RestartCount") or 0)
    exit_code = state.get("ExitCode")
    if status == "restarting" or state.get("Restarting"):
        return ServiceStatus(exp.service, FAILED, f"restarting (last exit code {exit_code})", cid)
    if status in ("exited", "dead"):
        err = f": {state['Error']}" if state.get("Error") else ""
        return ServiceStatus(exp.service, FAILED, f"{status} with code {exit_code}{err}", cid)
    if restarts >= max_restarts:
        return ServiceStatus(exp.service, FAILED, f"restarted {restarts} times", cid)
    if not runs_image(exp, c):
        return ServiceStatus(
            exp.service, WAITING, f"runs image {c.get('Image')}, expected {exp.image_id}", cid
        )
    got_hash = _labels(c).get(CONFIG_HASH_LABEL)
    if exp.config_hash is not None and got_hash != exp.config_hash:
        return ServiceStatus(
            exp.service, WAITING, f"config-hash label {got_hash!r}, expected {exp.config_hash}", cid
        )
    if status != "running":
        return ServiceStatus(exp.service, WAITING, f"container is {status or 'unknown'}", cid)
    health = state.get("Health")
    if health:
        hstatus = str(health.get("Status", ""))
        if hstatus == "healthy":
            return ServiceStatus(exp.service, OK, "healthy", cid)
        log = health.get("Log") or []
        last = ""
        if log:
            out = " ".join(str(log[-1].get("Output", "")).split())
            last = f" (last check: exit {log[-1].get('ExitCode')}{': ' + out if out else ''})"
        return ServiceStatus(exp.service, WAITING, f"health is {hstatus}{last}", cid)
    return ServiceStatus(exp.service, OK, "running", cid)


def decide(
    expected: Sequence[ServiceExpectation],
    containers: Iterable[Mapping[str, Any]],
    max_restarts: int = 1,
) -> Verdict:
    """The state of every expected service, given all containers of the project."""
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for c in containers:
        svc = _labels(c).get(SERVICE_LABEL)
        if svc is not None:
            by_service.setdefault(svc, []).append(c)
    out = []
    for exp in expected:
        mine = by_service.get(exp.service, [])
        if not mine:
            out.append(ServiceStatus(exp.service, WAITING, "no container"))
            continue
        statuses = [container_status(exp, c, max_restarts) for c in mine]
        worst = next((s for s in statuses if s.state == FAILED), None) or next(
            (s for s in statuses if s.state == WAITING), statuses[0]
        )
        out.append(worst)
    return Verdict(tuple(out))
