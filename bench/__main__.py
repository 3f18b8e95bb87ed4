"""`python -m bench` (`make bench`): every benchmark, each figure beside its same-run baseline."""

from __future__ import annotations

import platform
import sys

from bench import admission, auth, cache, capacity, latency, metrics, money, streams, submit

BENCHES = {
    "submit": submit.run,
    "latency": latency.run,
    "streams": streams.run,
    "money": money.run,
    "admission": admission.run,
    "auth": auth.run,
    "metrics": metrics.run,
    "capacity": capacity.run,
    "cache": cache.run,
}


def main() -> None:
    """Run the benchmarks named on the command line, or all of them."""
    chosen = sys.argv[1:] or list(BENCHES)
    print(
        f"benchmarks on {platform.node()}: {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}",
        flush=True,
    )
    for name in chosen:
        BENCHES[name]()


if __name__ == "__main__":
    main()
