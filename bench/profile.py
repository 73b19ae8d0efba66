"""``--profile``: sample a server process with py-spy while a scenario's clock runs.

py-spy (installed with the dev extras) reads the process from outside, so the profiled
code runs unchanged. The raw samples go to bench/results/; the report says which
libraries the process spends its busy time in (by the file of the innermost frame) and
which frames are on the stack most often, which is what the README's "what bounds it"
is read from.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where a frame's file lives -> the name it is counted under.
_LIBRARIES = ("gochat_streams", "faust", "mode", "aiokafka", "rocksdict", "pydantic", "prometheus_client",
              "aiohttp", "asyncio", "logging", "json", "selectors")
_FRAME_FILE = re.compile(r"\((?P<file>[^()]*?):\d+\)$")
SAMPLES_PER_S = 100


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[dev]'")
    return found


@dataclass
class Profile:
    """A py-spy run against one process; :meth:`report` once it has stopped."""

    name: str
    out: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, pid: int, out: Path) -> Profile:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([_py_spy(), "record", "-p", str(pid), "-r", str(SAMPLES_PER_S), "-f", "raw",
                                 "-o", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return cls(name, out, proc)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(2)  # py-spy writes what it sampled on SIGINT
        self.proc.wait(timeout=60)
        return summarise(self.name, self.out)


def _library(frame: str) -> str:
    match = _FRAME_FILE.search(frame)
    path = match["file"] if match else frame
    parts = path.replace(".py", "").split("/")  # py-spy names files from their site-packages
    return next((lib for lib in _LIBRARIES if lib in parts), "other")


def _cost(frames: list[str]) -> str:
    """What a sample pays for: the innermost frame's library, told apart by a few stack markers."""
    names = ";".join(frame.split(" (")[0] for frame in frames)
    leaf_name = frames[-1].split(" (")[0]
    leaf = "/" + frames[-1].split(" (", 1)[-1]
    if "WorkerThread.run" in names:
        return "Faust's consumer thread (aiokafka fetch)"
    if leaf_name == "_SelectorSocketTransport.write":
        return "socket writes (produce requests)"
    if "selectors.py" in leaf:
        return "epoll wait"
    if re.search(r"/(json|pydantic|pydantic_core|orjson)/", leaf) or leaf_name in ("dumps", "loads"):
        return "JSON / pydantic encode-decode"
    if "rocksdb.py" in leaf or "rocksdict" in leaf:
        return "RocksDB get/put"
    if "Sender." in names or "SendProduceReqHandler" in names:
        return "producer: requests and responses (aiokafka sender)"
    if re.search(r"/aiokafka/(producer|record|codec)|partitioner", leaf) or "Producer.send" in leaf_name:
        return "producer: send/append (accumulator, lz4, partitioner)"
    if "prometheus_client" in leaf:
        return "metrics (prometheus_client)"
    if re.search(r"/faust/(tables|stores)/", leaf) or re.search(r"ProducerBuffer|FutureMessage|send_soon", names):
        return "Faust's table/changelog path (FutureMessage, buffer)"
    if "gochat_streams" in leaf:
        return "gochat_streams"
    if re.search(r"/(faust|mode)/", leaf):
        return "Faust/mode per-event machinery (streams, conductor, sensors, acks)"
    if "/aiokafka/" in leaf:
        return "aiokafka, other (consumer, client)"
    if "/asyncio/" in leaf or "threading" in leaf:
        return "asyncio loop (tasks, futures, callbacks)"
    return "other"


def summarise(name: str, raw: Path, top: int = 15) -> dict[str, Any]:
    """Busy samples by library (innermost frame), by what they pay for, and the frames most often on the stack."""
    by_library: Counter[str] = Counter()
    by_cost: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        total += samples
        by_library[_library(frames[-1])] += samples
        by_cost[_cost(frames)] += samples
        for frame in set(frames):
            on_stack[frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].rstrip(")")] += samples
    share = {lib: round(100 * n / total, 1) for lib, n in by_library.most_common()} if total else {}
    frames = [(round(100 * n / total, 1), frame) for frame, n in on_stack.most_common(top + 15)
              if not frame.startswith(("<module>", "BaseEventLoop.", "Handle._run", "_run", "Command.",
                                       "Worker.execute", "Group.invoke", "Context.invoke", "pass_context",
                                       "Thread._bootstrap"))][:top] if total else []
    return {"process": name, "busy_samples": total, "busy_s": round(total / SAMPLES_PER_S, 1),
            "share_by_library_pct": share,
            "share_by_cost_pct": {cost: round(100 * n / total, 1) for cost, n in by_cost.most_common()} if total else {},
            "top_frames_pct": frames, "raw": str(raw)}


def print_profile(profile: dict[str, Any]) -> None:
    print(f"\nprofile of {profile['process']}: {profile['busy_s']} s busy ({profile['raw']})")
    print("  by library: " + ", ".join(f"{lib} {pct}%" for lib, pct in profile["share_by_library_pct"].items()))
    print("  by cost: " + ", ".join(f"{cost} {pct}%" for cost, pct in profile.get("share_by_cost_pct", {}).items()))
    for pct, frame in profile["top_frames_pct"]:
        print(f"  {pct:5.1f}%  {frame}")


if __name__ == "__main__":  # python -m bench.profile bench/results/profile-....txt: summarise a saved run
    for path in sys.argv[1:]:
        print_profile(summarise(Path(path).stem, Path(path)))
