"""`make bench`: run every benchmark, print each figure (a ratio measured side by side in one run), and write
them to ``benchmarks/results.csv`` with the date, the machine and the command that reproduces each."""

import csv
import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = ["bench_prep", "bench_loading", "bench_train", "bench_sampling", "bench_eval"]


def machine():
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None):
    names = (argv or sys.argv[1:]) or SUITES
    sys.path.insert(0, str(HERE))
    rows = []
    for name in names:
        t0 = time.time()
        for row in importlib.import_module(name).run():
            row.update(date=time.strftime("%Y-%m-%d"), machine=machine(),
                       command=f".venv/bin/python benchmarks/run.py {name}")
            rows.append(row)
            print(f"{row['figure']}: {row['value']:.2f} {row['unit']}  ({row['note']})", flush=True)
        print(f"[{name} took {time.time() - t0:.0f} s]", flush=True)
    out = HERE / "results.csv"
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["date", "machine", "figure", "value", "unit", "note", "command"])
        w.writeheader()
        w.writerows(rows)
    print(f"written {out}")


if __name__ == "__main__":
    main()
