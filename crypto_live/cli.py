"""`crypto-live`: one command, one subcommand per service.

Services are configured only through environment variables (listed in each
subcommand's --help); command-line options exist only for the local tools
(`run`, `simulate`). A bad setting ends the command with exit status 2 and one line
naming the variable — never a traceback.

This is the only place where an error becomes a message and an exit status: every
failure crypto-live reports is a :class:`~crypto_live.errors.CryptoLiveError` (the tree
is drawn in :mod:`crypto_live.errors`), printed here as ``crypto-live COMMAND: reason``
(with LOG_FORMAT=json, as one JSON object like every log line: :mod:`crypto_live.logs`).
Services and the shared package never import this module.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from crypto_live import __version__, binance, logs
from crypto_live.errors import CryptoLiveError, SettingsError
from crypto_live.settings import SERVICES, LogSettings, MonitoringSettings, describe, load, secret_values, variables

PROG = "crypto-live"
EXIT_INTERRUPTED = 130
#: Credentials boto3 may read from the environment: redacted from logs like secret settings.
_ENVIRONMENT_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# subcommand -> (settings class or None, "module:function" running it, one-line summary)
_SERVICE_ENTRY = {
    "producer": ("producer.service:run", "Read the Binance websocket and publish each event to KAFKA_TOPIC."),
    "s3-sink": ("processors.s3_sink:run", "Write the topic to S3 as JSONL objects (by count or time)."),
    "dynamo-sink": ("processors.dynamo_sink:run", "Upsert one DynamoDB row per event, with a TTL."),
}


def _env_epilog(settings_classes: Sequence[type], extra: Sequence[tuple[str, str]] = ()) -> str:
    """The "environment variables" block of a --help: the settings' variables, then
    ``extra`` (name, help) pairs a command reads outside the settings objects."""
    seen: dict[str, str] = {}
    for cls in settings_classes:
        for spec in variables(cls):
            default = spec.default if spec.default is not None else ""
            if spec.fallback:
                default = f"${spec.fallback}"
            elif spec.derive is not None:
                default = "derived"
            seen.setdefault(spec.env, f"  {spec.env:<32} {spec.help} [default: {default!s}]")
    for name, text in extra:
        seen.setdefault(name, f"  {name:<32} {text}")
    return "environment variables:\n" + "\n".join(seen.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Land Binance miniTicker events in S3 and DynamoDB through Kafka, losslessly.",
        epilog="Run `crypto-live COMMAND --help` for the environment variables each command reads.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log verbosity (env LOG_LEVEL; default INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    for name, (target, summary) in _SERVICE_ENTRY.items():
        cmd = sub.add_parser(
            name, help=summary, description=summary, formatter_class=fmt, epilog=_env_epilog([SERVICES[name]])
        )
        cmd.set_defaults(handler=_service_handler(name, target))

    run = sub.add_parser(
        "run",
        formatter_class=fmt,
        help="Run the whole pipeline on one machine (embedded broker and AWS emulator unless configured).",
        description="Start what is not configured (Tansu broker unless KAFKA_BOOTSTRAP_SERVERS is set, "
        "moto unless AWS_ENDPOINT_URL is set), provision topic, bucket, table and secret, and run "
        "producer, S3 sink and DynamoDB sink together until Ctrl-C.",
        epilog=_env_epilog(
            list(SERVICES.values()),
            extra=[
                ("AWS_ENDPOINT_URL", "boto3's own endpoint override"),
                ("CRYPTO_LIVE_LOG_DIR", "where each service's log goes (default .crypto-live/logs)"),
                ("LOG_LEVEL", "log verbosity (default INFO)"),
            ],
        ),
    )
    run.add_argument("--simulate", action="store_true", help="read the built-in market simulator, not Binance")
    run.add_argument("--symbols", type=int, default=50, help="simulated symbol count (with --simulate)")
    run.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    run.set_defaults(handler=_lazy("crypto_live.local:run_command"))

    sim = sub.add_parser(
        "simulate",
        formatter_class=fmt,
        help="Serve a Binance-compatible miniTicker websocket with a simulated market.",
        description="A websocket server speaking Binance's market-data protocol: /ws/!miniTicker@arr, "
        "/ws/<symbol>@miniTicker, /stream?streams=a/b, SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS, "
        "server pings, and optional faults.",
        epilog="environment variables: none\n\nfault spec: comma-separated KIND@SECONDS, KIND@everySECONDS "
        "or stall@SECONDSforSECONDS; kinds: drop, shutdown, junk, stall.\n"
        "example: crypto-live simulate --faults drop@30,junk@every10",
    )
    sim.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    sim.add_argument("--symbols", type=int, default=20, help="number of simulated symbols (default 20)")
    sim.add_argument(
        "--interval", type=float, default=1.0, help="seconds between market updates, like Binance's 1 s (default 1.0)"
    )
    sim.add_argument(
        "--rate",
        type=float,
        default=None,
        help="events per second across all symbols; sets --interval = symbols / rate",
    )
    sim.add_argument("--faults", default="", help="fault schedule, e.g. drop@30,shutdown@60,junk@every10")
    sim.add_argument("--seed", type=int, default=None, help="random seed for a reproducible market")
    sim.set_defaults(handler=_lazy("crypto_live.simulator.cli:simulate_command"))

    prov = sub.add_parser(
        "provision",
        formatter_class=fmt,
        help="Create the topics, bucket, table and websocket secret when missing (local stacks).",
        description="Create whatever is missing: the event and dead-letter topics (explicit partitions and "
        "retention), the S3 bucket, the DynamoDB table (on-demand, TTL on `ttl`) and the websocket secret. "
        "Existing resources are left as they are. Production resources come from infrastructure code.",
        epilog=_env_epilog(list(SERVICES.values())),
    )
    prov.add_argument("--kafka", action="store_true", help="only the topics")
    prov.add_argument("--aws", action="store_true", help="only the bucket, table and secret")
    prov.add_argument(
        "--websocket-url",
        default=binance.LIVE_URL,
        help="value stored in BINANCE_WEBSOCKET_SECRET when it has to be created",
    )
    prov.set_defaults(handler=_lazy("crypto_live.provision:provision_command"))

    cfg = sub.add_parser(
        "config",
        formatter_class=fmt,
        help="Validate the settings and print the effective configuration (secrets masked).",
        description="Validate every service's settings and print the effective values and where each "
        "came from. Exits 2 naming the first bad variable.",
        epilog=_env_epilog(list(SERVICES.values())),
    )
    cfg.add_argument("service", nargs="?", choices=list(SERVICES), help="only this service's settings")
    cfg.set_defaults(handler=config_command)

    health = sub.add_parser(
        "healthcheck",
        formatter_class=fmt,
        help="Exit 0 when a running service's processing loop is working, 1 when it is stuck or not running.",
        description="Check SERVICE's heartbeat, a file its processing loop refreshes about every second "
        "(CRYPTO_LIVE_HEARTBEAT_DIR/crypto-live-SERVICE.heartbeat): exit 0 when it is at most "
        "HEALTHCHECK_MAX_AGE seconds old, 1 with one line naming the file and its age when it is older "
        "or missing. Run it inside the service's container, as its health check.",
        epilog=_env_epilog([MonitoringSettings]),
    )
    health.add_argument("service", choices=list(SERVICES), help="the service to check")
    health.set_defaults(handler=_lazy("crypto_live.health:healthcheck_command"))
    return parser


def _import(target: str) -> Callable[..., int]:
    module, _, function = target.partition(":")
    entry: Callable[..., int] = getattr(importlib.import_module(module), function)
    return entry


def _lazy(target: str) -> Callable[[argparse.Namespace, Mapping[str, str]], int]:
    # Import services only when chosen: `--help` and `config` stay fast and need no broker libs.
    def handler(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        return _import(target)(args, environ)

    return handler


def _service_handler(name: str, target: str) -> Callable[[argparse.Namespace, Mapping[str, str]], int]:
    def handler(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
        settings = load(SERVICES[name], environ)
        for secret in secret_values(settings):
            logs.register_secret(secret)
        return _import(target)(settings)

    return handler


def config_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    names = [args.service] if args.service else list(SERVICES)
    loaded = [(name, load(SERVICES[name], environ)) for name in names]  # validate all before printing
    for index, (name, settings) in enumerate(loaded):
        if index:
            print()
        print(f"[{name}]")
        for env, shown, source in describe(settings, environ):
            print(f"{env}={shown}" + ("" if source == "env" else f"  # {source}"))
    endpoint = environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        print(f"\n# boto3 endpoint override: AWS_ENDPOINT_URL={endpoint}")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        # LOG_FORMAT first: a bad value is reported (as text) before anything logs.
        logs.configure(args.log_level, load(LogSettings, environ).format, service=args.command)
        for name in _ENVIRONMENT_SECRETS:
            if environ.get(name):
                logs.register_secret(environ[name])
        handler: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.handler
        return handler(args, environ)
    except CryptoLiveError as exc:
        kind = "configuration error: " if isinstance(exc, SettingsError) else ""
        print(logs.final_line(f"{PROG} {args.command}: {kind}{exc}", exc.exit_status), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
