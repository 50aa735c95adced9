"""The demo: a local Upstox, real Airflow, a SQLite store. No broker account, no database server.

Run ``bash scripts/demo.sh`` (creates ``.venv-demo`` with the provider, then calls this script), or,
where the provider is installed, ``python scripts/demo.py [--ui] [--seconds 20]``:

* default: streams for ``--seconds`` with ``upstox_portfolio_stream``, reconciles, prints a summary;
* ``--ui``: Airflow's API server, scheduler, triggerer and dag-processor keep running with
  ``upstox_portfolio_events`` streaming; open the printed URL, Ctrl-C stops everything.

Everything goes to a temporary directory, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from upstox_demo import batch, ui
from upstox_demo.common import running_simulator, say


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ui", action="store_true", help="keep Airflow running with its web UI until Ctrl-C")
    parser.add_argument("--port", type=int, default=None, help="UI port (--ui; default 8080, or a free one)")
    parser.add_argument("--seconds", type=float, default=20, help="how long the market runs (default mode)")
    parser.add_argument("--rate", type=float, default=None, help="simulator updates per second")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the simulator and the work directory are cleaned up
    # (--ui installs its own handlers that also stop the Airflow processes).
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))

    work = Path(tempfile.mkdtemp(prefix="upstox-demo-"))
    try:
        with running_simulator(work) as demo:
            say(f"local Upstox simulator on {demo.base_url} (random token; no broker account involved)")
            if args.ui:
                return ui.run(demo, port=args.port, rate=args.rate or 5)
            return batch.run(demo, seconds=args.seconds, rate=args.rate or 20)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
