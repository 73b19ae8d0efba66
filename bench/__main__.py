"""``python -m bench SCENARIO [--smoke] [options]``: run a scenario on a broker of its own; a table and a JSON file.

``--smoke`` runs it tiny, to check that it completes and loses nothing (CI does), not how fast.
Each run starts a broker of its own on loopback: one Kafka node, or with ``--kafka-nodes 3``
a 3-node Kafka cluster whose topics take the spec's replicas;
``--broker kafka://host:9092`` measures against your own cluster instead.
``--profile`` samples the servers with py-spy while the clock runs (bench/profile.py).
``python -m bench SCENARIO -h`` says what a scenario measures (its module's docstring) and its
options. The exit code is 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from gochat_streams.devstack import kafka_version

from . import e2e, group, logic, memory, raw
from .common import Bench, Result, lost, new_bench, report

MODULES = {"raw": raw, "logic": logic, "e2e": e2e, "group": group, "memory": memory}

#: scenario -> option -> (default, default with --smoke)
SIZES: dict[str, dict[str, tuple[Any, Any]]] = {
    "raw": {"records": (200_000, 2_000)},
    "logic": {"records": (20_000, 200), "users": (10_000, 50), "workers": (1, 1)},
    "e2e": {"users": (1_000, 20), "steps": ([100, 250, 500, 1_000, 2_000, 4_000], [50]), "step_seconds": (30.0, 2.0),
            "drain_seconds": (5.0, 5.0)},
    "group": {"members": (1_000, 20), "groups": (10, 10)},
    "memory": {"users": (100_000, 1_000), "marks": (1_000_000, 10_000), "sockets": (10_000, 100)},
}


def _loads(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


#: scenario -> option -> (type, help)
OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "raw": {},
    "logic": {"records": (int, "messages to send"), "users": (int, "online users"),
              "workers": (int, "logic workers sharing the partitions")},
    "e2e": {"users": (int, "online users, half on each gateway"),
            "steps": (_loads, "offered loads in msgs/s, as 500,1000"),
            "step_seconds": (float, "how long each load is offered"),
            "drain_seconds": (float, "how long after a step's last send its messages may arrive")},
    "group": {"members": (int, "members of each group, all online"), "groups": (int, "groups messaged at once")},
    "memory": {"users": (int, "online users in the worker's presence table"),
               "marks": (int, "delivered marks in the worker's dedup state"),
               "sockets": (int, "idle sockets on the gateway")},
}


def _size(args: argparse.Namespace, option: str) -> Any:
    value = getattr(args, option)
    return value if value is not None else SIZES[args.scenario][option][1 if args.smoke else 0]


async def run(bench: Bench, args: argparse.Namespace) -> Result:
    if args.scenario in ("raw", "logic"):
        # raw always: logic's figure is read as a share of it.
        ceiling = await raw.run_raw(bench.settings, SIZES["raw"]["records"][1 if args.smoke else 0])
        if args.scenario == "raw":
            return Result([ceiling])
        row = await logic.run_logic(bench, _size(args, "records"), users=_size(args, "users"),
                                    workers=_size(args, "workers"))
        row["ratio_to_raw"] = round(row["msgs_per_s"] / ceiling["msgs_per_s"], 4)
        return Result([ceiling, row])
    if args.scenario == "e2e":
        return await e2e.run_e2e(bench, _size(args, "users"), _size(args, "steps"), _size(args, "step_seconds"),
                                 _size(args, "drain_seconds"))
    if args.scenario == "group":
        return await group.run_group(bench, _size(args, "members"), _size(args, "groups"))
    return await memory.run_memory(bench, _size(args, "users"), _size(args, "marks"), _size(args, "sockets"))


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="gochat-bench-") as tmp:
        bench = new_bench(Path(tmp), args.broker, args.profile, args.kafka_nodes)
        try:
            result = await run(bench, args)
        finally:
            bench.stack.stop()
    report(args.scenario, result.rows, {"smoke": args.smoke, "broker": args.broker or _own_broker(bench, args),
                                         **result.extra, "profiles": bench.profiles}, result.summary)
    return 1 if any(lost(row) for row in result.rows) else 0


def main() -> None:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--smoke", action="store_true", help="tiny run: completes, loses nothing")
    shared.add_argument("--broker", help="a broker URL instead of a broker of its own")
    shared.add_argument("--kafka-nodes", type=int, choices=(1, 3), default=1,
                        help="nodes of its own Kafka cluster (3: the spec's replicas)")
    shared.add_argument("--profile", action="store_true",
                        help="sample the servers with py-spy while the clock runs (logic, e2e, group)")
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for scenario, options in OPTIONS.items():
        doc = MODULES[scenario].__doc__ or ""
        sub = scenarios.add_parser(scenario, parents=[shared], help=doc.split("\n")[0].split(": ", 1)[-1],
                                   description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        for option, (kind, text) in options.items():
            full, smoke = SIZES[scenario][option]
            sub.add_argument(f"--{option.replace('_', '-')}", type=kind, dest=option,
                             help=f"{text} (default {_shown(full)}; --smoke {_shown(smoke)})")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


def _own_broker(bench: Bench, args: argparse.Namespace) -> str:
    """What the run's own broker was, for its report."""
    return f"kafka {kafka_version()} (loopback, {args.kafka_nodes} node{'s' if args.kafka_nodes > 1 else ''})"


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
