"""What bench/score.sh prints about its runs, from the files they left in one directory.

    python report.py python RESULTS_DIR KEY     one line on the Python baseline's run KEY
    python report.py compare RESULTS_DIR KEY    one line on the comparison of KEY's outputs
    python report.py table RESULTS_DIR ROWS     the figures table and the goals

For every MODEL.FORMAT measured: MODEL.FORMAT.python.{run,out}, and when ferry ran,
MODEL.FORMAT.ferry.{run,out,sha256} and MODEL.FORMAT.compare.json. A .run file is one line
`wall=SECONDS rss_kb=KB rc=STATUS`. Exits 1 when ferry did not run, failed, or wrote other
results than Python; goals not met are reported, not errors.
"""

import json
import os
import sys

MODELS = ("logreg", "churn")
FORMATS = ("parquet", "csv")
RSS_GOAL_MB = 200
SPEEDUP_GOAL = 5
ROWS_GOAL = {("logreg", "parquet"): 5_000_000, ("logreg", "csv"): 1_000_000}


def load_run(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        fields = dict(kv.split("=", 1) for kv in f.read().split())
    return {"wall": float(fields["wall"]), "rss_mb": int(fields["rss_kb"] or 0) * 1024 / 1e6,
            "rc": int(fields["rc"])}


def load_json(path):
    """The last JSON object a command printed on stdout."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    pass
    return None


def num(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


def python_line(res, key):
    run, out = load_run(f"{res}/{key}.python.run"), load_json(f"{res}/{key}.python.out")
    print(f"  python: {run['wall']:.1f} s, {out['rows'] / run['wall']:,.0f} rows/s, "
          f"peak RSS {run['rss_mb']:,.0f} MB (model {out['load_model_seconds']:.1f} s, "
          f"read {out['read_seconds']:.1f} s, score {out['score_seconds']:.1f} s, "
          f"write {out['write_seconds']:.1f} s{', read in chunks' if out['read'] == 'chunked' else ''})")


def compare_line(res, key):
    r = load_json(f"{res}/{key}.compare.json")
    if r is None:
        print("  ferry against python: not compared (see the error above)")
        return
    columns = ", ".join(
        f"{c}: {v['mismatches']} mismatches" if "mismatches" in v else f"{c}: max |diff| {v['max_abs_diff']:.2g}"
        for c, v in r["columns"].items())
    print(f"  ferry against python: {r['summary']} ({r['rows'][1]:,} rows; {columns})")


def table(res, rows):
    failures, goals = [], []
    any_chunked = False
    table = []
    for model in MODELS:
        for fmt in FORMATS:
            key = f"{model}.{fmt}"
            py = load_run(f"{res}/{key}.python.run")
            if py is None:
                continue
            chunked = (load_json(f"{res}/{key}.python.out") or {}).get("read") == "chunked"
            any_chunked = any_chunked or chunked
            fe = load_run(f"{res}/{key}.ferry.run")
            fe_json = load_json(f"{res}/{key}.ferry.out")
            cmp = load_json(f"{res}/{key}.compare.json")
            py_rps = rows / py["wall"]
            fe_rps = rows / fe["wall"] if fe and fe["rc"] == 0 else None
            speedup = fe_rps / py_rps if fe_rps else None
            if fe is None:
                diff = "not run"
            elif fe["rc"] != 0:
                diff = f"ferry failed ({fe['rc']})"
                failures.append(f"{key}: ferry score exited with {fe['rc']}")
            elif cmp is None:
                diff = "no comparison"
                failures.append(f"{key}: the outputs were not compared")
            else:
                diff = "identical" if cmp["identical"] else (
                    f"{cmp['max_abs_diff']:.2g}" if not cmp["problems"] else "DIFFERENT")
                failures += [f"{key}: {p}" for p in cmp["problems"]]
            if fe and fe["rc"] == 0:
                if fe_json is None:
                    failures.append(f"{key}: ferry --json printed no JSON object")
                else:
                    if fe_json.get("rows") != rows:
                        failures.append(f"{key}: ferry reports {fe_json.get('rows')} rows, not {rows}")
                    sha_path = f"{res}/{key}.ferry.sha256"
                    if os.path.isfile(sha_path):
                        sha = open(sha_path).read().split()[0]
                        if fe_json.get("output_sha256") != sha:
                            failures.append(f"{key}: ferry reports output_sha256 "
                                            f"{fe_json.get('output_sha256')}, the file's is {sha}")
            failed = fe is not None and fe["rc"] != 0
            shown = (lambda x, fmt="{:,.0f}": "failed" if failed else num(x, fmt))  # noqa: E731
            if (model, fmt) in ROWS_GOAL:
                target = ROWS_GOAL[(model, fmt)]
                goal = f">= {target:,} rows/s"
                goals.append((f"{model} from {fmt}: ferry rows/s", shown(fe_rps), goal,
                              fe_rps is not None and fe_rps >= target))
            else:
                goal = f">= {SPEEDUP_GOAL}x python"
                goals.append((f"{model} from {fmt}: ferry against Python", shown(speedup, "{:.1f}x"),
                              goal, speedup is not None and speedup >= SPEEDUP_GOAL))
            fe_rss = fe["rss_mb"] if fe and fe["rc"] == 0 else None
            goals.append((f"{model} from {fmt}: ferry peak RSS", shown(fe_rss, "{:.0f} MB"),
                          f"<= {RSS_GOAL_MB} MB", fe_rss is not None and fe_rss <= RSS_GOAL_MB))
            table.append((model, fmt, num(py_rps) + ("*" if chunked else ""), num(fe_rps), num(speedup, "{:.1f}x"),
                          num(fe_rss, "{:.0f}"), num(py["rss_mb"], "{:.0f}"), diff,
                          f"{goal}; RSS <= {RSS_GOAL_MB} MB"))

    head = ("model", "format", "python rows/s", "ferry rows/s", "speedup", "ferry RSS MB",
            "python RSS MB", "max |diff|", "goal")
    widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]

    def line(r):
        return "  ".join(str(v).ljust(w) if i in (0, 1, 7, 8) else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(r, widths))).rstrip()

    print(line(head))
    for r in table:
        print(line(r))
    if any_chunked:
        print("* Python read, scored and wrote in chunks, not the whole file at once (see its lines above)")
    print()
    print("goals")
    for text, value, target, ok in goals:
        verdict = "----" if value == "-" else "PASS" if ok else "FAIL"
        print(f"  {verdict}  {text:42} {value:>14}   goal {target}")
    measured = [ok for _, value, _, ok in goals if value != "-"]
    print(f"{sum(measured)} of {len(goals)} goals met" +
          (f" ({len(goals) - len(measured)} not measured)" if len(measured) < len(goals) else ""))
    if failures:
        print()
        for f in failures:
            print(f"error: {f}", file=sys.stderr)
        sys.exit(1)


def main():
    mode, res, arg = sys.argv[1:4]
    if mode == "python":
        python_line(res, arg)
    elif mode == "compare":
        compare_line(res, arg)
    elif mode == "table":
        table(res, int(arg))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
