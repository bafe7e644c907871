"""Query the results store (read-only).

    python -m platform.query "select * from iterations order by run_id, iteration"
    python -m platform.query --format csv "select * from accuracy_by_iteration"
    python -m platform.query --results other_results --format json "select * from trials"
"""

from __future__ import annotations

import argparse
import sys

from platform.store import query_df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.query", description="Query the results DuckDB.")
    parser.add_argument("sql")
    parser.add_argument("--results", default="results", help="results folder or .duckdb file (default: results)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    args = parser.parse_args(argv)
    try:
        df = query_df(args.results, args.sql)
    except Exception as exc:  # noqa: BLE001 - one clear line for any SQL or file error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif args.format == "json":
        sys.stdout.write(df.to_json(orient="records", indent=1) + "\n")
    else:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.max_columns", 50, "display.width", 200):
            print(df.to_string(index=False) if len(df) else "(no rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
