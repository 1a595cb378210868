"""Writes the zoo's run-to-run spread (`ssl_zoo/zoo/seed_spread.json`, read by `ssl-zoo reproduce`)
from the evaluation reports of one recipe trained with different seeds:

    ssl-zoo train training/NAME.toml --data-dir DATA --out runs/NAME_seed0
    ssl-zoo train training/NAME.toml --data-dir DATA --out runs/NAME_seed1 --set train.seed=1
    ssl-zoo evaluate runs/NAME_seedK --data-dir DATA --out runs/NAME_seedK/eval.json   (each K)
    python export/seed_spread.py runs/NAME_seed0/eval.json runs/NAME_seed1/eval.json --seeds 0,1 --entry NAME

Refuses reports measured under different protocols (their differences would not be the seeds').
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssl_zoo.errors import SslZooError
from ssl_zoo.preset import write_json
from ssl_zoo.reproduce import SPREAD_FILE, spread_from_reports


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="evaluation reports (ssl-zoo evaluate --out), one per seed")
    p.add_argument("--seeds", required=True, help="the seeds, comma-separated, in the reports' order")
    p.add_argument("--entry", required=True, help="the recipe's name (the entry whose seeds these are)")
    p.add_argument("--command", default=None, help="how the runs were made (default: the usage above for --entry)")
    p.add_argument("--out", default=str(SPREAD_FILE))
    args = p.parse_args(argv)
    try:
        reports = [json.loads(Path(r).read_text()) for r in args.reports]
        seeds = [int(s) for s in args.seeds.split(",")]
        command = args.command or (f"ssl-zoo train training/{args.entry}.toml --set train.seed=K, then ssl-zoo evaluate "
                                   "under the recipe's protocol, for each seed K")
        spread = spread_from_reports(reports, entry=args.entry, seeds=seeds, command=command)
    except (OSError, ValueError, SslZooError) as e:
        print(f"seed_spread: {e}", file=sys.stderr)
        return 2
    write_json(spread, args.out, sort_keys=False)
    print(json.dumps({k: spread[k] for k in ("entry", "seeds", "probe", "knn")}, indent=1))
    print(f"spread: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
