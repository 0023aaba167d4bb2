"""The one table of a benchmark run: tierpoint and DCP side by side, ratios, spreads, the
baselines of the same run, and PASS/FAIL per target of issue 13. Pure functions (no I/O
besides reading extra-row files), so tests can drive them with made-up results.

Extra rows (the hook for other benchmarks, e.g. bench/drain.py's): a JSON file
``{"rows": [ROW, ...]}``, each ROW with

    "case": str, "ranks": str, "tierpoint_s": [seconds per repeat],
    optional "dcp_s": [seconds], "bytes": int (what one repeat moved),
    "baseline_bps": float and "baseline": str (the roofline it is compared with),
    "targets": [{"what": str, "passed": true | false | null}], "note": str

is shown below the run's own rows, with its own targets. A missing key is shown as "-".
The file bench/drain.py writes with ``--json`` (its rows under ``"summary"``, each with
"what", "value", "per_round", "reference", "reference_is", "ratio", "target", "verdict") is
read as well: its values keep their unit (GB/s or s), and ``%best`` shows its ratio to its
own reference.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

GB = 1e9


@dataclass
class Target:
    what: str
    passed: bool | None  # None: not measurable in this run (a library failed)

    @property
    def verdict(self) -> str:
        return f"{self.what} {'n/a' if self.passed is None else 'PASS' if self.passed else 'FAIL'}"


@dataclass
class Row:
    case: str
    ranks: str
    tp: list[float]
    dcp: list[float] = field(default_factory=list)
    nbytes: int | None = None
    baseline_bps: float | None = None  # the best baseline of the kind this row competes with
    ampl: tuple[float | None, float | None] | None = None  # read amplification (tp, DCP)
    targets: list[Target] = field(default_factory=list)
    note: str = ""
    separator: bool = False  # a rule above this row
    unit: str = "s"  # of tp and dcp (an extra row may give GB/s)
    pct: float | None = None  # %best given by the row's source (else from nbytes/baseline)


def med(xs) -> float | None:
    xs = [x for x in xs or [] if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def at_least(what: str, value: float | None, bound: float) -> Target:
    return Target(what, None if value is None else value >= bound)


def at_most(what: str, value: float | None, bound: float) -> Target:
    return Target(what, None if value is None else value <= bound)


def pct_of(row: Row) -> float | None:
    if row.pct is not None:
        return row.pct
    m = med(row.tp)
    if m is None or not row.nbytes or not row.baseline_bps:
        return None
    return 100 * row.nbytes / m / row.baseline_bps


def _secs(xs: list[float], unit: str = "s") -> str:
    m = med(xs)
    if m is None:
        return "-"
    return f"{m:.2f}{'' if unit == 's' else unit} ({min(xs):.2f}-{max(xs):.2f})"


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


HEADER = (f"{'case':<40}{'ranks':>6} | {'tierpoint s (min-max)':>21} | "
          f"{'DCP s (min-max)':>19} | {'DCP/tp':>6} | {'GB/s':>6} | {'%best':>5} | "
          f"{'read amp tp/DCP':>15} | targets")


def render(rows: list[Row]) -> str:
    """The table as text: one line per row; 'targets' lists each target with PASS/FAIL."""
    lines = [HEADER, "-" * len(HEADER)]
    for r in rows:
        if r.separator:
            lines.append("-" * len(HEADER))
        m = med(r.tp)
        gbps = r.nbytes / m / GB if m and r.nbytes and r.unit == "s" else None
        amp = "-"
        if r.ampl is not None:
            amp = f"{_f(r.ampl[0], '.2f')} / {_f(r.ampl[1], '.2f')}"
        lines.append(
            f"{r.case:<40}{r.ranks:>6} | {_secs(r.tp, r.unit):>21} | "
            f"{_secs(r.dcp, r.unit):>19} | "
            f"{_f(ratio(med(r.dcp), m) if r.unit == 's' else None, '6.2f'):>6} | {_f(gbps, '6.3f'):>6} | "
            f"{_f(pct_of(r), '5.0f'):>5} | {amp:>15} | "
            + ("; ".join(t.verdict for t in r.targets) or r.note))
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> tuple[int, int, int]:
    """(passed, failed, not measurable) over every target of every row."""
    got = [t.passed for r in rows for t in r.targets]
    return got.count(True), got.count(False), got.count(None)


def load_extra_rows(path: str) -> list[Row]:
    """Rows from a JSON file another benchmark wrote (schemas in the module docstring)."""
    with open(path) as f:
        doc = json.load(f)
    if "rows" not in doc and "summary" in doc:
        rows = [_summary_row(path, i, r) for i, r in enumerate(doc["summary"])]
    else:
        rows = [_extra_row(path, i, r) for i, r in enumerate(doc["rows"])]
    if rows:
        rows[0].separator = True
    return rows


def _extra_row(path: str, i: int, r: dict) -> Row:
    try:
        return Row(case=str(r["case"]), ranks=str(r.get("ranks", "-")),
                   tp=[float(x) for x in r["tierpoint_s"]],
                   dcp=[float(x) for x in r.get("dcp_s") or []],
                   nbytes=r.get("bytes"), baseline_bps=r.get("baseline_bps"),
                   targets=[Target(str(t["what"]), t.get("passed"))
                            for t in r.get("targets", [])],
                   note=str(r.get("note", r.get("baseline", ""))))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: row {i} is not an extra row ({e!r}): {r!r}") from None


def _summary_row(path: str, i: int, r: dict) -> Row:
    """A row of bench/drain.py's summary: a value (GB/s or s) against its own reference."""
    try:
        what = str(r["what"])
        unit = "GB/s" if what.endswith("GB/s") else "s"
        case = what.rsplit(",", 1)[0] if "," in what else what
        target = r.get("target")
        targets = []
        if target is not None:
            targets = [Target(f"ratio>={float(target):.2f}", {"PASS": True, "FAIL": False}
                              .get(r.get("verdict")))]
        return Row(case=case, ranks="-", tp=[float(x) for x in r.get("per_round") or
                                             [r["value"]]],
                   unit=unit, pct=100 * float(r["ratio"]), targets=targets,
                   note=f"vs {r.get('reference_is', 'its reference')} "
                        f"{float(r['reference']):.3f}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: summary row {i} is not a drain row ({e!r}): {r!r}") from None


def run_rows(res: dict) -> list[Row]:
    """The run's own rows and targets from the raw results of save_restore.py.

    ``res``: {"bytes": state bytes, "disk": {"write": (label, B/s) | None, "read": ...},
    "memcpy_s": [s], "save": {case: {"tierpoint": [s], "dcp": [s]}},
    "restore": {case: {"tierpoint": [s], "dcp": [s], "ampl": {lib: [ratio]}, "ranks": n}}}
    with save cases "durable", "async blocks", "async commit" and restore cases "same",
    "2to1", "2to4 rows", "2to4 cols"."""
    n = res["bytes"]
    wbest, rbest = res["disk"].get("write"), res["disk"].get("read")
    wbw, rbw = (wbest[1] if wbest else None), (rbest[1] if rbest else None)
    save = res.get("save", {})
    get = lambda d, case, lib: d.get(case, {}).get(lib, [])  # noqa: E731
    durable = Row("durable save (blocking)", "2", get(save, "durable", "tierpoint"),
                  get(save, "durable", "dcp"), n, wbw)
    durable.targets = [at_least("DCP/tp>=1.0", ratio(med(durable.dcp), med(durable.tp)), 1.0),
                       at_least(">=90% best disk write", pct_of(durable), 90.0)]
    blocks = Row("async save: time save() blocks", "2", get(save, "async blocks", "tierpoint"),
                 get(save, "async blocks", "dcp"), n, None)
    mc = med(res.get("memcpy_s"))
    blocks.note = (f"x memcpy: tp {_f(ratio(med(blocks.tp), mc), '.2f')}, "
                   f"DCP {_f(ratio(med(blocks.dcp), mc), '.2f')}")
    commit = Row("async save: time to commit", "2", get(save, "async commit", "tierpoint"),
                 get(save, "async commit", "dcp"), n, wbw)
    commit.targets = [
        at_most("tp<=1.05x own blocking", ratio(med(commit.tp), med(durable.tp)), 1.05),
        at_least("tp<=1.0x DCP async", ratio(med(commit.dcp), med(commit.tp)), 1.0)]
    rows = [durable, blocks, commit]
    labels = {"same": "restore same layout", "2to1": "restore 2->1",
              "2to4 rows": "restore 2->4 rows (Shard(0))",
              "2to4 cols": "restore 2->4 new sharding (->Shard(1))"}
    restore = res.get("restore", {})
    for case, label in labels.items():
        ph = restore.get(case)
        if ph is None:
            continue
        amp = ph.get("ampl", {})
        row = Row(label, f"2->{ph.get('ranks', '?')}", ph.get("tierpoint", []),
                  ph.get("dcp", []), n, rbw,
                  ampl=(med(amp.get("tierpoint")), med(amp.get("dcp"))))
        if case == "2to4 cols":
            row.targets = [at_least("DCP/tp>=2.0", ratio(med(row.dcp), med(row.tp)), 2.0),
                           at_most("read amp<=1.25", row.ampl[0], 1.25)]
        rows.append(row)
    return rows


def baseline_rows(res: dict) -> list[Row]:
    """The roofline rows: the best disk write and cold read, and memcpy, as the seconds they
    take for the state's bytes (their spread from the samples of that baseline)."""
    n = res["bytes"]
    out = []
    for kind, what in (("write", "disk write"), ("read", "disk cold read")):
        best = res["disk"].get(kind)
        if best:
            label, bw = best
            samples = res["disk"]["samples"][kind][label]
            out.append(Row(f"baseline: {what}, best ({label})", "-",
                           [n / x for x in samples], nbytes=n, baseline_bps=bw,
                           note="the roofline of the %best column"))
    if res.get("memcpy_s"):
        out.append(Row("baseline: memcpy (numpy, 2 ranks)", "2", res["memcpy_s"], nbytes=n,
                       note="the floor of an async save's blocking time"))
    if out:
        out[0].separator = True
    return out
