"""The pure "started?" decision over inspect data."""

from __future__ import annotations

from typing import Any, Optional

from usbupdater.apps.health import FAILED, OK, WAITING, ServiceExpectation, decide

IMG = "sha256:" + "a" * 64
EXP = [ServiceExpectation("web", IMG, "h1")]


def ctr(
    status: str = "running",
    image: str = IMG,
    hash_: Optional[str] = "h1",
    service: str = "web",
    health: Optional[dict[str, Any]] = None,
    restarts: int = 0,
    exit_code: int = 0,
) -> dict[str, Any]:
    labels = {"com.docker.compose.service": service}
    if hash_ is not None:
        labels["io.compose-spec.config-hash"] = hash_
    state: dict[str, Any] = {
        "Status": status,
        "Restarting": status == "restarting",
        "ExitCode": exit_code,
    }
    if health is not None:
        state["Health"] = health
    return {
        "Id": "c1",
        "Image": image,
        "Config": {"Labels": labels},
        "State": state,
        "RestartCount": restarts,
    }


def test_running_without_healthcheck_is_started() -> None:
    v = decide(EXP, [ctr()])
    assert v.ok and v.services[0].state == OK


def test_no_container_is_waiting() -> None:
    v = decide(EXP, [ctr(service="other")])
    assert not v.ok and v.failed is None and v.waiting is not None
    assert v.waiting.reason == "no container"


def test_exited_fails_at_once() -> None:
    v = decide(EXP, [ctr(status="exited", exit_code=3)])
    assert v.failed is not None and v.failed.service == "web"
    assert "code 3" in v.failed.reason and v.failed.container_id == "c1"


def test_restart_loop_fails() -> None:
    assert decide(EXP, [ctr(status="restarting", exit_code=1)]).failed is not None
    assert decide(EXP, [ctr(restarts=2)]).failed is not None
    assert decide(EXP, [ctr(restarts=1)], max_restarts=3).ok


def test_wrong_image_or_hash_waits() -> None:
    v = decide(EXP, [ctr(image="sha256:" + "b" * 64)])
    assert v.waiting is not None and "image" in v.waiting.reason
    v = decide(EXP, [ctr(hash_="other")])
    assert v.waiting is not None and "config-hash" in v.waiting.reason
    v = decide([ServiceExpectation("web", IMG, None)], [ctr(hash_=None)])
    assert v.ok


def test_health() -> None:
    assert decide(EXP, [ctr(health={"Status": "healthy"})]).ok
    v = decide(EXP, [ctr(health={"Status": "starting"})])
    assert v.waiting is not None and v.failed is None
    log = [{"ExitCode": 1, "Output": "nope\n"}]
    v = decide(EXP, [ctr(health={"Status": "unhealthy", "Log": log})])
    assert v.failed is None and v.waiting is not None
    assert "unhealthy" in v.waiting.reason and "nope" in v.waiting.reason


def test_created_waits_and_worst_container_wins() -> None:
    assert decide(EXP, [ctr(status="created")]).waiting is not None
    v = decide(EXP, [ctr(), ctr(status="dead", exit_code=137)])
    assert v.services[0].state == FAILED


def test_every_service_judged() -> None:
    exp = [*EXP, ServiceExpectation("db", IMG, None)]
    v = decide(exp, [ctr()])
    assert [s.state for s in v.services] == [OK, WAITING]
