"""Command-line front end, compatible with aklite-offline's commands and flags.

Each command handler imports what it needs when it runs, so `usbupdater --help` stays fast and
never imports docker, tuf or pyudev. Every failure ends as one line on stderr and the exit code of
its class (spec section 4); bad usage exits 1 as aklite-offline does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

from usbupdater import __version__
from usbupdater.errors import ConfigError, ExitCode, UpdaterError
from usbupdater.textsafe import safe_text

if TYPE_CHECKING:
    from usbupdater.checkin import CheckIn
    from usbupdater.config import Config
    from usbupdater.core import Device

Handler = Callable[[argparse.Namespace], int]
DeviceFactory = Callable[["Config"], "Device"]


def _real_device(cfg: Config) -> Device:
    from usbupdater.core import Device

    return Device(cfg)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.ERROR), f"{self.prog}: error: {message}\n")


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """aklite-offline accepts its global flags after the command too; so do we."""
    default: Any = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=default,
        metavar="PATH",
        help="configuration file or directory of *.toml (repeatable; later keys win)",
    )
    parser.add_argument(
        "--log-level",
        type=int,
        choices=range(6),
        default=2 if top else argparse.SUPPRESS,
        metavar="N",
        help="0 trace, 1 debug, 2 info (default), 3 warning, 4 error, 5 fatal",
    )


def _load_config(args: argparse.Namespace) -> Any:
    from usbupdater import config

    return config.load(args.config)


# --- commands ---------------------------------------------------------------------------------


def cmd_current(args: argparse.Namespace) -> int:
    """Show what the device runs, as usbupdater recorded it."""
    from usbupdater.state import StateStore

    cfg = _load_config(args)
    st = StateStore(cfg.state_dir).load()
    cur = st.current
    pending = st.pending.target.name if st.pending is not None else None
    # Every app of the target; "on" for those this device runs ([pacman] compose_apps and
    # fetched-apps shortlists decide), "off" for the others.
    apps: dict[str, str] = {}
    if cur is not None:
        listed = cur.custom.get("docker_compose_apps")
        if isinstance(listed, dict):
            apps = {a: str(v.get("uri", "")) for a, v in listed.items() if isinstance(v, dict)}
        apps.update(cur.apps)
    if getattr(args, "json", False):
        doc = {
            "target": cur.name if cur else None,
            "version": cur.version if cur else None,
            "commit": cur.commit if cur else None,
            "apps": {
                a: {"uri": u, "on": cur is not None and a in cur.apps} for a, u in apps.items()
            },
            "pending": pending,
        }
        print(json.dumps(doc, indent=2, sort_keys=True))
        return int(ExitCode.OK)
    if cur is None:
        print("Target: none recorded (this device has not been updated by usbupdater yet)")
        return int(ExitCode.OK)
    print(f"Target: {cur.name}")
    print(f"Version: {cur.version}")
    print(f"Ostree hash: {cur.commit}")
    print("Apps:")
    for app, uri in sorted(apps.items()):
        print(f"\t({'on' if app in cur.apps else 'off'}) {app} -> {uri}")
    if pending is not None:
        print(f"Pending: {pending} (call `usbupdater run` to finish it)")
    return int(ExitCode.OK)


def cmd_status(args: argparse.Namespace) -> int:
    """Summarise the state: current and pending targets, the last result."""
    from usbupdater.state import StateStore

    cfg = _load_config(args)
    st = StateStore(cfg.state_dir).load()
    service = _service_status(cfg.usbupdater.status_file)
    if args.json:
        doc = st.to_json()
        doc["service"] = service
        print(json.dumps(doc, indent=2, sort_keys=True))
        return int(ExitCode.OK)
    print(f"Hardware id: {cfg.provision.primary_ecu_hardware_id}")
    print(f"Current: {st.current.name if st.current else 'none recorded'}")
    print(f"Pending: {st.pending.target.name if st.pending else 'nothing'}")
    if st.last_result is not None:
        r = st.last_result
        print(f"Last result: {r.command} exited {r.code} at {r.time}: {r.message}")
    if service is not None:
        print(f"Service: {service.get('phase')}: {service.get('message', '')}")
    return int(ExitCode.OK)


def _service_status(path: Any) -> Optional[dict[str, Any]]:
    """What the `watch` service last reported (its status file), if it runs here."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def cmd_check(args: argparse.Namespace) -> int:
    """Verify a bundle against this device (or a kind of device) and show every target."""
    from pathlib import Path

    from usbupdater import check_report, core

    try:
        if args.device_roots is not None:
            result = _check_kind(args)
        else:
            cfg = _load_config(args)
            result = core.check(cfg, Path(args.src_dir), device=args.make_device(cfg))
    except UpdaterError as exc:
        if args.json:  # scripts get their one object; the line on stderr says it too
            print(json.dumps(check_report.failure(exc), indent=2))
        raise
    doc = check_report.describe(result)
    print(json.dumps(doc, indent=2) if args.json else check_report.format_text(doc))
    return int(result.code)


def _check_kind(args: argparse.Namespace) -> CheckIn:
    """The office check: a kind of device given on the command line, no configuration."""
    from pathlib import Path

    from usbupdater.checkin import DeviceKind, check_kind
    from usbupdater.hostinfo import docker_platform, machine_platform

    roots = Path(args.device_roots)
    if not roots.is_dir():
        raise ConfigError(f"--device-roots {roots}: not a directory")
    tags = tuple(t.strip() for arg in args.tag or () for t in arg.split(",") if t.strip())
    kind = DeviceKind(
        hardware_id=args.hwid,
        tags=tags,
        device_type=args.type,
        roots=roots,
        platform=docker_platform(args.arch) if args.arch else machine_platform(),
    )
    return check_kind(Path(args.src_dir), kind)


def cmd_install(args: argparse.Namespace) -> int:
    """Verify the bundle and install its target (rootfs and/or apps); see the exit codes."""
    from pathlib import Path

    from usbupdater import core
    from usbupdater.stick_bundles import device_view, resolve

    cfg = _load_config(args)
    dev = args.make_device(cfg)
    src = resolve(cfg, Path(args.src_dir), device_view(cfg, dev))  # a stick with several bundles
    outcome = core.install(cfg, src, target_name=args.target, force=args.force, device=dev)
    return _print_result(args, int(outcome.code), outcome.message, outcome.target)


def cmd_run(args: argparse.Namespace) -> int:
    """Finish the pending installation after the reboot (or engine restart)."""
    from usbupdater import core

    cfg = _load_config(args)
    outcome = core.run(cfg, device=args.make_device(cfg))
    return _print_result(args, int(outcome.code), outcome.message, outcome.target)


def _print_result(args: argparse.Namespace, code: int, message: str, target: Any = None) -> int:
    """The one line for people, or with `--json` (install, run) one object for scripts."""
    if getattr(args, "result_json", False):
        doc = {"command": args.command, "code": code, "message": message, "target": target}
        print(json.dumps(doc, sort_keys=True))
    else:
        print(message)
    return code


def cmd_pick(args: argparse.Namespace) -> int:
    """Say which bundle of a stick is for this device (what the service asks); change nothing."""
    from pathlib import Path

    from usbupdater.stick_bundles import bundle_names, device_view, pick
    from usbupdater.stick_choice import Choice, Verdict
    from usbupdater.textsafe import safe_text

    cfg = _load_config(args)
    stick = Path(args.src_dir)
    names = bundle_names(stick)
    verdicts: list[Verdict] = []
    if names is None:
        choice = Choice(".", ExitCode.OK, "the stick itself is the bundle")
    elif not names:
        choice = Choice(None, ExitCode.NO_TARGET, "no bundle on the stick")
    else:
        choice, verdicts = pick(cfg, stick, names, device_view(cfg, args.make_device(cfg)))
    if args.json:
        doc = {
            "chosen": choice.chosen,  # a directory name: the caller matches it against its own
            "code": int(choice.code),
            "message": choice.message,
            "bundles": [v.to_json() for v in verdicts],
        }
        print(json.dumps(doc, indent=2))
    else:
        for v in verdicts:
            state = f"fits: {v.target} (version {v.version})" if v.fits else f"no: {v.why}"
            print(f"{safe_text(v.name, 80)}: {safe_text(state, 300)}")
        print(choice.message)
    return int(choice.code)


def cmd_report(args: argparse.Namespace) -> int:
    """Summarise the reports the devices wrote to a stick; needs no device configuration."""
    from pathlib import Path

    from usbupdater import site_report

    summary = site_report.summarise_stick(Path(args.src_dir))
    fmt = "json" if args.json else "csv" if args.csv else "text"
    sys.stdout.write(site_report.render(summary, fmt))
    return int(ExitCode.OK) if summary.ok else int(ExitCode.ERROR)


def cmd_watch(args: argparse.Namespace) -> int:
    """Run the USB update service: wait for sticks and install what they carry."""
    from usbupdater.agent.service import main as watch_main

    cfg = _load_config(args)
    return watch_main(cfg, tuple(args.config or ()))


def _quiet_option(p: argparse.ArgumentParser) -> None:
    """Commands that meter their work show a progress bar at a terminal; --quiet hides it."""
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar at a terminal")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="usbupdater",
        description="Offline updates of OSTree + docker-compose devices from a USB stick "
        "(fioctl targets offline-update bundles); aklite-offline compatible.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(p, top=False)
        p.set_defaults(handler=handler)
        return p

    p = add(
        "check",
        cmd_check,
        "verify a bundle (trust and content) and show every target for this device; "
        "exit 16 when a newer target is installable, 0 when already on the best one",
    )
    p.add_argument("-s", "--src-dir", required=True, metavar="DIR", help="the bundle directory")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    office = p.add_argument_group(
        "a kind of device (no configuration, sysroot or state needed: e.g. at the office)"
    )
    office.add_argument(
        "--device-roots",
        metavar="ROOTS",
        help="the device's trusted root metadata: a directory like /usr/lib/sota/tuf "
        "(ci/ and prod/ of N.root.json), or one holding N.root.json",
    )
    office.add_argument("--hwid", metavar="H", help="the device's hardware id")
    office.add_argument(
        "--tag", action="append", metavar="T", help="the device's tag (repeatable, or T1,T2)"
    )
    office.add_argument(
        "--type", choices=("ci", "prod"), default="ci", help="the device's type (default ci)"
    )
    office.add_argument(
        "--arch",
        metavar="MACHINE",
        help="the device's machine (uname -m, e.g. aarch64) for the app images; default this one",
    )
    _quiet_option(p)
    p = add(
        "install",
        cmd_install,
        "install the newest (or the named) target of a bundle; exit 100: reboot then run, "
        "101: restart the Docker engine then run, 0: nothing to do, 90: reboot first",
    )
    p.add_argument("-s", "--src-dir", required=True, metavar="DIR", help="the bundle directory")
    p.add_argument("-t", "--target", metavar="NAME", help="install this target, not the newest")
    p.add_argument("-f", "--force", action="store_true", help="allow a downgrade or a retry")
    _result_json(p)
    _quiet_option(p)
    p = add(
        "run",
        cmd_run,
        "finish the pending installation after the reboot: start the apps, confirm or roll back",
    )
    _result_json(p)
    _quiet_option(p)
    p = add("current", cmd_current, "show the target the device runs")
    p.add_argument("--json", action="store_true", help="print the target as JSON")
    p = add("status", cmd_status, "show current and pending targets and the last result")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p = add(
        "pick",
        cmd_pick,
        "say which bundle of a stick with several (one per top-level directory) is for this "
        "device: exit 0 one is, 6 none is, 1 several offer the same newest version",
    )
    p.add_argument("-s", "--src-dir", required=True, metavar="STICK", help="the stick")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p = add(
        "report",
        cmd_report,
        "summarise the reports devices wrote to a stick: one row per device (latest outcome "
        "first) and totals; exit 0 when every device ended updated or up to date, else 1",
    )
    p.add_argument(
        "-s", "--src-dir", required=True, metavar="STICK", help="the stick (or its report folder)"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the summary as JSON")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per device")
    add(
        "watch",
        cmd_watch,
        "run the service that installs updates from USB sticks as they are plugged in",
    )
    return parser


def _result_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        dest="result_json",
        action="store_true",
        help="print one JSON object (command, code, message, target) on stdout, also on failure",
    )


def main(
    argv: Optional[Sequence[str]] = None, *, make_device: Optional[DeviceFactory] = None
) -> int:
    """The program; `make_device` builds the core's `Device` from the configuration (default:
    the real adapters; the simulation kit passes its own, see `usbupdater.sim.core`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check" and args.device_roots is None and (args.hwid or args.tag):
        parser.error("check: --hwid and --tag describe a kind of device: give --device-roots too")
    if args.command == "check" and args.device_roots is not None and not args.hwid:
        parser.error("check: --device-roots needs --hwid")
    args.make_device = make_device or _real_device
    from usbupdater import log

    log.configure(args.log_level)
    try:
        if hasattr(args, "quiet"):  # install, run, check: one meter, a bar at a terminal
            from usbupdater.cli_progress import run_metered

            return run_metered(
                lambda: int(args.handler(args)), bar=not args.quiet, log_level=args.log_level
            )
        return int(args.handler(args))
    except UpdaterError as exc:
        print(f"usbupdater: {exc.reason}", file=sys.stderr)
        if getattr(args, "result_json", False):
            _print_result(args, int(exc.code), exc.reason)
        return int(exc.code)
    except OSError as exc:  # e.g. EIO from a stick pulled out, EACCES on a directory
        where = f": {safe_text(str(exc.filename), 200)}" if exc.filename else ""  # the stick's
        print(f"usbupdater: {exc.strerror or exc}{where}", file=sys.stderr)
        if getattr(args, "result_json", False):
            _print_result(args, int(ExitCode.ERROR), f"{exc.strerror or exc}{where}")
        return int(ExitCode.ERROR)
    except KeyboardInterrupt:
        print("usbupdater: interrupted", file=sys.stderr)
        return int(ExitCode.ERROR)
    except Exception as exc:  # a bug: say so in one line, keep the traceback in the log
        log.get_logger("cli").exception("unexpected error")
        print(f"usbupdater: unexpected error: {exc!r}", file=sys.stderr)
        if getattr(args, "result_json", False):
            _print_result(args, int(ExitCode.ERROR), f"unexpected error: {exc!r}")
        return int(ExitCode.ERROR)
