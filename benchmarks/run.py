"""`make bench`: run every benchmark suite, print each figure (a ratio measured side by side in one run), and
rewrite ``benchmarks/results.csv`` whole from this run, with the date, the machine, its load and the command that
reproduces each figure. ``run.py bench_loading`` (a subset) prints its figures and leaves ``results.csv`` alone:
the committed file always holds one complete run, never hand-edited or spliced rows. ``check_row`` is the format
the file is written in; ``tests/test_benchmarks.py`` applies it to the committed rows.
"""

import csv
import importlib
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.csv"
#: Suite module → the prefix of its figures' names.
SUITES = {"bench_prep": "prep: ", "bench_loading": "loading: ", "bench_train": "train: ",
          "bench_sampling": "sampling: ", "bench_eval": "eval: "}
FIELDS = ["date", "machine", "load", "suite", "figure", "value", "unit", "note", "command"]
UNITS = {"ratio", "s", "accuracy"}
COMMAND = ".venv/bin/python benchmarks/run.py {suite}"
_MACHINE = re.compile(r"[\w-]+, \d+ cores, Python \d+\.\d+\.\d+")


def machine():
    """``<arch>, <n> cores, Python <version>``."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load():
    """The 1-minute load average (other jobs on a shared machine show here), as text."""
    return f"{os.getloadavg()[0]:.2f}"


def check_row(row):
    """Raise ``ValueError`` unless ``row`` (a dict of strings, as read back from the CSV) is in the written format."""
    if list(row) != FIELDS:
        raise ValueError(f"columns {list(row)}; expected {FIELDS}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date"]):
        raise ValueError(f"date {row['date']!r}; expected YYYY-MM-DD")
    if not _MACHINE.fullmatch(row["machine"]):
        raise ValueError(f"machine {row['machine']!r}; expected '<arch>, <n> cores, Python <x.y.z>'")
    float(row["load"])
    if row["suite"] not in SUITES:
        raise ValueError(f"suite {row['suite']!r}; expected one of {list(SUITES)}")
    if not row["figure"].startswith(SUITES[row["suite"]]):
        raise ValueError(f"figure {row['figure']!r} of suite {row['suite']}: expected it to start with "
                         f"{SUITES[row['suite']]!r}")
    value = float(row["value"])
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"value {row['value']!r}: expected a finite positive number")
    if row["unit"] not in UNITS:
        raise ValueError(f"unit {row['unit']!r}; expected one of {sorted(UNITS)}")
    if not row["note"].strip():
        raise ValueError("empty note")
    if row["command"] != COMMAND.format(suite=row["suite"]):
        raise ValueError(f"command {row['command']!r}; expected {COMMAND.format(suite=row['suite'])!r}")


def read_results(path=RESULTS):
    """The rows of a results file (dicts of strings)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv=None):
    names = list(argv if argv is not None else sys.argv[1:]) or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SystemExit(f"unknown suite(s) {unknown}; expected some of {list(SUITES)}")
    sys.path.insert(0, str(HERE))
    rows, t_all = [], time.time()
    for name in names:
        t0, at_start = time.time(), load()
        for row in importlib.import_module(name).run():
            row = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), load=at_start, suite=name,
                       figure=row["figure"], value=row["value"], unit=row["unit"], note=row["note"],
                       command=COMMAND.format(suite=name))
            check_row({k: str(v) for k, v in row.items()})
            rows.append(row)
            print(f"{row['figure']}: {row['value']:.2f} {row['unit']}  ({row['note']})", flush=True)
        print(f"[{name} took {time.time() - t0:.0f} s, load {at_start} at its start]", flush=True)
    print(f"[all took {time.time() - t_all:.0f} s]")
    if set(names) != set(SUITES):
        print(f"partial run ({', '.join(names)}): {RESULTS} left as it is (it holds one whole `make bench` run)")
        return rows
    with open(RESULTS, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    print(f"written {RESULTS}")
    return rows


if __name__ == "__main__":
    main()
