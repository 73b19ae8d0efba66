"""``python -m bench {raw,logic} [--smoke]``: run a scenario on a broker of its own; a table and a JSON file.

``--smoke`` runs it tiny, to check that it completes and loses nothing (CI does), not how fast.
``--broker kafka://host:9092`` measures against your own cluster instead of Tansu.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from .common import new_bench, report
from .logic import run_logic
from .raw import run_raw

SIZES = {  # scenario -> (records, smoke records)
    "raw": (200_000, 2_000),
    "logic": (20_000, 200),
}


async def main_async(args: argparse.Namespace) -> int:
    records = args.records or SIZES[args.scenario][1 if args.smoke else 0]
    with tempfile.TemporaryDirectory(prefix="gochat-bench-") as tmp:
        bench = new_bench(Path(tmp), args.broker)
        try:
            raw = await run_raw(bench.settings, SIZES["raw"][1 if args.smoke else 0])
            rows = [raw]
            if args.scenario == "logic":
                logic = await run_logic(bench, records, users=args.users or (50 if args.smoke else 10_000))
                logic["ratio_to_raw"] = round(logic["msgs_per_s"] / raw["msgs_per_s"], 4)
                rows.append(logic)
        finally:
            bench.stack.stop()
    report(args.scenario, rows, {"smoke": args.smoke, "broker": args.broker or "tansu (loopback)"})
    lost = [row for row in rows if row.get("delivered", row["records"]) != row["records"]]
    return 1 if lost else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SIZES))
    parser.add_argument("--smoke", action="store_true", help="tiny run: completes, loses nothing")
    parser.add_argument("--records", type=int, help="messages to send (default per scenario)")
    parser.add_argument("--users", type=int, help="online users (logic)")
    parser.add_argument("--broker", help="a broker URL instead of a Tansu of its own")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
