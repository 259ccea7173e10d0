#!/usr/bin/env python3
"""Aggregate the files scripts/bench.sh leaves in its temp dir into a plain-text
table (stdout) and a JSON document (--out). Standard library only.

Layout read under --tmp:
  runs/warmup/, runs/run-1/ .. runs/run-N/   run.json, time.txt, exit_code, branch,
                                             stderr.log, counts.json (store and Docker
                                             requests of the run's process)
  floor/docker_run.txt, floor/git_clone.txt, floor/git_push.txt   one ms value a line
  setup/durations.txt                                             "step seconds" lines
  concurrent/run-1/ .. concurrent/run-C/, concurrent/batch.txt     with --concurrency C: the
                                             C runs started at once, and the batch's wall ms
  batch/time.txt, batch/exit_code, batch/batch.json                with --batch B: B runs in
                                             one `specrun batch` process

Exit status: 0 when the warm-up and every counted run succeeded, 1 otherwise.
"""

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone

from bench_common import parse_ts, stats

PHASES = [
    "prepare",
    "clone",
    "specify",
    "plan",
    "tasks",
    "commit",
    "push",
    "pull_request",
    "cleanup",
]

FLOORS = [
    ("docker_run", "docker run --rm true", "docker run --rm --network none {image} true"),
    ("git_clone", "git clone", "git clone of the bench repo into a temp dir"),
    ("git_push", "git push", "git push of a new branch with one small commit"),
]

def read_text(path, default=None):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return default


def load_run(run_dir):
    """One run's measurements; never raises for a broken run."""
    run = {
        "name": os.path.basename(run_dir),
        "branch": (read_text(os.path.join(run_dir, "branch"), "") or "").strip(),
        "exit_code": None,
        "status": None,
        "run_id": None,
        "error": None,
        "peak_rss_kib": None,
        "wall_ms": None,
        "in_run_total_ms": None,
        "phases": {},
        "counts": None,
    }
    try:
        run["counts"] = json.loads(read_text(os.path.join(run_dir, "counts.json"), "") or "null")
    except json.JSONDecodeError:
        pass
    code = (read_text(os.path.join(run_dir, "exit_code"), "") or "").strip()
    run["exit_code"] = int(code) if code.lstrip("-").isdigit() else None

    # /usr/bin/time -o: may add "Command exited with non-zero status N" first;
    # the figures are on the last line.
    lines = [l for l in (read_text(os.path.join(run_dir, "time.txt"), "") or "").splitlines() if l.strip()]
    if lines:
        parts = lines[-1].split()
        if len(parts) == 2:
            try:
                run["peak_rss_kib"] = int(parts[0])
                run["wall_ms"] = float(parts[1]) * 1000.0
            except ValueError:
                pass

    raw = read_text(os.path.join(run_dir, "run.json"), "") or ""
    record = None
    try:
        record = json.loads(raw) if raw.strip() else None
    except json.JSONDecodeError:
        record = None
    if record is None:
        tail = (read_text(os.path.join(run_dir, "stderr.log"), "") or "").strip().splitlines()[-15:]
        run["error"] = {
            "code": "no_run_json",
            "message": "specrun printed no valid run.json on stdout (last stderr lines below)",
            "log_excerpt": "\n".join(tail),
        }
        return run

    run["status"] = record.get("status")
    run["run_id"] = record.get("run_id")
    run["error"] = record.get("error")
    started = parse_ts(record.get("started_at"))
    finished = parse_ts(record.get("finished_at"))
    if started and finished:
        run["in_run_total_ms"] = (finished - started).total_seconds() * 1000.0
    for phase in record.get("phases") or []:
        run["phases"][phase.get("phase")] = {
            "status": phase.get("status"),
            "duration_ms": phase.get("duration_ms"),
        }
    return run


def succeeded(run):
    return run["exit_code"] == 0 and run["status"] == "succeeded"


def read_number(path):
    """A number written alone in a file, or None."""
    text = read_text(path)
    try:
        return float(text.strip()) if text else None
    except ValueError:
        return None


def read_floor(path):
    values = []
    for line in (read_text(path, "") or "").splitlines():
        line = line.strip()
        if line:
            values.append(float(line))
    return values


def fmt_ms(value):
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def row(label, st, note=""):
    if st is None:
        return f"{label:<28}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {note}".rstrip()
    cells = "".join(f"{fmt_ms(st[k]):>9}" for k in ("mean", "median", "min", "max"))
    return f"{label:<28}{cells}  {note}".rstrip()


def floor_total(floors):
    """The floor of one run: one container start, one clone, one push (medians), in ms."""
    parts = [floors.get(key) for key, _, _ in FLOORS]
    if any(p is None for p in parts):
        return None
    return sum(p["median"] for p in parts)


def phase_shares(phase_stats, wall):
    """Each phase's median as a share of the run's median wall time, and what the wall
    time holds outside the phases (process start, store writes between phases, exit)."""
    if wall is None or not wall["median"]:
        return {}
    shares = {
        phase: st["median"] / wall["median"]
        for phase, st in phase_stats.items()
        if st is not None
    }
    shares["outside phases"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def request_counts(runs):
    """The median over `runs` of each count of store and Docker requests per run, e.g.
    {"store": {"put": 20, ...}, "store_writes": 41, "docker": {"pause": 5, ...}, ...}."""
    counted = [r["counts"] for r in runs if r.get("counts")]
    if not counted:
        return None

    def median_of(get):
        values = [v for v in (get(c) for c in counted) if v is not None]
        return statistics.median(values) if values else None

    result = {"runs_counted": len(counted)}
    for group in ("store", "docker"):
        kinds = sorted({k for c in counted for k in (c.get(group) or {})})
        result[group] = {k: median_of(lambda c, k=k: (c.get(group) or {}).get(k, 0)) for k in kinds}
    for total in ("store_writes", "store_reads"):
        result[total] = median_of(lambda c, t=total: c.get(t))
    result["docker_requests"] = median_of(lambda c: sum((c.get("docker") or {}).values()))
    return result


def fmt_counts(counts):
    return ", ".join(f"{k} {v:g}" for k, v in counts.items() if v)


def concurrent_batch(tmp, concurrency):
    """The --concurrency batch: its runs, their wall time from the first start to the last
    end, and the runner processes' peak RSS; None when the batch was not run."""
    batch_ms = read_floor(os.path.join(tmp, "concurrent", "batch.txt"))
    if not concurrency or not batch_ms:
        return None
    runs = []
    for i in range(1, concurrency + 1):
        run = load_run(os.path.join(tmp, "concurrent", f"run-{i}"))
        run["name"] = f"concurrent run-{i}"
        runs.append(run)
    rss = [r["peak_rss_kib"] / 1024.0 for r in runs if r["peak_rss_kib"] is not None]
    return {
        "concurrency": concurrency,
        "host_cpu_ms_per_run": read_number(os.path.join(tmp, "concurrent", "host_cpu_ms_per_run.txt")),
        "runs_succeeded": sum(1 for r in runs if succeeded(r)),
        "batch_wall_ms": batch_ms[0],
        "runner_peak_rss_mib_max": max(rss) if rss else None,
        "runner_peak_rss_mib_sum": sum(rss) if rss else None,
        "runs": runs,
    }


def one_process_batch(tmp, size, agent):
    """The --batch run: B runs in flight in one runner process; None when not run."""
    if not size:
        return None
    result = {"runs": size, "agent": agent, "exit_code": None, "wall_ms": None,
              "runner_peak_rss_mib": None, "succeeded": None}
    code = (read_text(os.path.join(tmp, "batch", "exit_code"), "") or "").strip()
    result["exit_code"] = int(code) if code.lstrip("-").isdigit() else None
    lines = [l for l in (read_text(os.path.join(tmp, "batch", "time.txt"), "") or "").splitlines() if l.strip()]
    if lines and len(lines[-1].split()) == 2:
        rss, wall = lines[-1].split()
        result["runner_peak_rss_mib"] = int(rss) / 1024.0
        result["wall_ms"] = float(wall) * 1000.0
    try:
        record = json.loads(read_text(os.path.join(tmp, "batch", "batch.json"), "") or "null")
        result["succeeded"] = ((record or {}).get("counts") or {}).get("succeeded")
    except json.JSONDecodeError:
        pass
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--image-id", required=True)
    ap.add_argument("--repo-files", type=int, required=True)
    ap.add_argument("--specrun-version", default="unknown")
    ap.add_argument("--bench-start-us", type=int, default=None)
    ap.add_argument("--bench-now-us", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=0)
    ap.add_argument("--noisy-mib", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    runs_dir = os.path.join(args.tmp, "runs")
    warmup = load_run(os.path.join(runs_dir, "warmup"))
    runs = [load_run(os.path.join(runs_dir, f"run-{i}")) for i in range(1, args.runs + 1)]
    good = [r for r in runs if succeeded(r)]
    failed = [r for r in [warmup] + runs if not succeeded(r)]

    phase_stats = {}
    phase_status = {}
    for phase in PHASES:
        phase_stats[phase] = stats([r["phases"].get(phase, {}).get("duration_ms") for r in good])
        statuses = sorted({r["phases"].get(phase, {}).get("status") or "missing" for r in good})
        phase_status[phase] = statuses
    phase_sum = stats(
        [sum((p.get("duration_ms") or 0) for p in r["phases"].values()) for r in good]
    )
    in_run = stats([r["in_run_total_ms"] for r in good])
    wall = stats([r["wall_ms"] for r in good])
    rss_mib = [r["peak_rss_kib"] / 1024.0 for r in good if r["peak_rss_kib"] is not None]

    floors = {}
    for key, _, desc in FLOORS:
        floors[key] = stats(read_floor(os.path.join(args.tmp, "floor", f"{key}.txt")))
        if floors[key] is not None:
            floors[key]["command"] = desc.format(image=args.image)

    setup = {}
    for line in (read_text(os.path.join(args.tmp, "setup", "durations.txt"), "") or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            setup[parts[0]] = float(parts[1])

    floor = floor_total(floors)
    ratio = wall["median"] / floor if wall and floor else None
    shares = phase_shares(phase_stats, wall)
    concurrent = concurrent_batch(args.tmp, args.concurrency)
    noisy = None
    if args.noisy_mib:
        noisy = load_run(os.path.join(args.tmp, "noisy", "run-1"))
        noisy["name"] = "noisy run"
        noisy["agent_output_mib"] = args.noisy_mib
    counts = request_counts(good)
    batch = one_process_batch(args.tmp, args.batch, "noisy" if args.noisy_mib else "scripted")
    if concurrent and wall:
        concurrent["ratio_to_one_run"] = concurrent["batch_wall_ms"] / wall["median"]
    host_cpu = {
        "per_run": read_number(os.path.join(args.tmp, "runs", "host_cpu_ms_per_run.txt")),
        "per_floor_docker_run": read_number(
            os.path.join(args.tmp, "floor", "host_cpu_ms_per_docker_run.txt")
        ),
    }

    image_short = args.image_id.split(":", 1)[-1][:12]
    out = sys.stdout
    print(
        f"specrun benchmark: {args.runs} runs, scripted agent, image {args.image} "
        f"(id {image_short}), repo with {args.repo_files} files",
        file=out,
    )
    print(
        f"{args.specrun_version}; publish branch; 1 warm-up run not counted; "
        f"{len(good)}/{len(runs)} runs succeeded",
        file=out,
    )
    print(file=out)
    print(f"{'phase':<28}{'mean':>9}{'median':>9}{'min':>9}{'max':>9}  (ms)", file=out)
    for phase in PHASES:
        statuses = phase_status[phase]
        note = "" if statuses == ["succeeded"] else "/".join(statuses)
        print(row(phase, phase_stats[phase], note), file=out)
    print(row("sum of phases", phase_sum), file=out)
    print(row("in-run total", in_run, "finished_at - started_at"), file=out)
    print(row("run wall", wall, "/usr/bin/time, whole process"), file=out)
    if rss_mib:
        print(
            f"runner peak RSS: max {max(rss_mib):.1f} MiB, mean {statistics.fmean(rss_mib):.1f} MiB",
            file=out,
        )
    else:
        print("runner peak RSS: -", file=out)
    print(file=out)
    print(f"{'floor (x' + str(args.runs) + ')':<28}{'mean':>9}{'median':>9}{'min':>9}{'max':>9}  (ms)", file=out)
    for key, label, _ in FLOORS:
        print(row(f"floor: {label}", floors[key]), file=out)

    print(file=out)
    if ratio is not None:
        print(
            f"floor of one run (sum of the medians): {fmt_ms(floor)} ms; "
            f"run wall median {fmt_ms(wall['median'])} ms; ratio to the floor {ratio:.2f}x",
            file=out,
        )
    if shares:
        print(
            "share of the run wall (medians): "
            + ", ".join(f"{k} {v * 100:.0f}%" for k, v in shares.items()),
            file=out,
        )
    if counts:
        print(
            f"requests per run (medians of {counts['runs_counted']}): state store "
            f"{counts['store_writes']:g} writes, {counts['store_reads']:g} reads "
            f"({fmt_counts(counts['store'])}); Docker API {counts['docker_requests']:g} "
            f"({fmt_counts(counts['docker'])})",
            file=out,
        )
    if host_cpu["per_run"] is not None:
        line = (
            f"host CPU (all processes, /proc/stat): {host_cpu['per_run']:g} ms per run one "
            "at a time"
        )
        if host_cpu["per_floor_docker_run"] is not None:
            line += f", {host_cpu['per_floor_docker_run']:g} ms per floor `docker run`"
        print(line, file=out)
    if concurrent:
        rss = concurrent["runner_peak_rss_mib_max"]
        print(
            f"concurrency {concurrent['concurrency']}: {concurrent['runs_succeeded']}/"
            f"{concurrent['concurrency']} succeeded, all done in {fmt_ms(concurrent['batch_wall_ms'])} ms"
            + (f", {concurrent['ratio_to_one_run']:.2f}x one run" if "ratio_to_one_run" in concurrent else "")
            + (f"; peak RSS per runner process max {rss:.1f} MiB" if rss is not None else ""),
            file=out,
        )
        at_once = stats(read_floor(os.path.join(args.tmp, "floor", "docker_run_at_once.txt")))
        if at_once and wall:
            concurrent["bare_containers_at_once_ms"] = at_once
            print(
                f"concurrency {concurrent['concurrency']}: {concurrent['concurrency']} bare "
                f"`docker run`s at once took {fmt_ms(at_once['median'])} ms (median of 3), "
                f"{at_once['median'] / wall['median']:.2f}x one run: the engine's own floor for "
                "this ratio",
                file=out,
            )
        per_run = concurrent.get("host_cpu_ms_per_run")
        if per_run is not None:
            cores = os.cpu_count() or 1
            busy = per_run * concurrent["concurrency"] / (cores * concurrent["batch_wall_ms"])
            print(
                f"concurrency {concurrent['concurrency']}: host CPU {per_run:g} ms per run; "
                f"the {cores} cores were {busy * 100:.0f}% busy while they ran",
                file=out,
            )
        for r in concurrent["runs"]:
            if not succeeded(r):
                failed.append(r)

    if batch:
        rss = batch["runner_peak_rss_mib"]
        print(
            f"{batch['runs']} runs in flight in one process ({batch['agent']} agent"
            + (f", {args.noisy_mib} MiB each" if args.noisy_mib else "")
            + f"): {batch['succeeded'] if batch['succeeded'] is not None else '-'}/{batch['runs']} succeeded, "
            f"wall {fmt_ms(batch['wall_ms'])} ms, runner peak RSS "
            + (f"{rss:.1f} MiB" if rss is not None else "-"),
            file=out,
        )
        if batch["exit_code"] != 0:
            failed.append({"name": "one-process batch", "branch": "-", "run_id": None,
                           "status": None, "exit_code": batch["exit_code"],
                           "error": {"code": "batch_failed",
                                     "message": "specrun batch did not succeed (see batch/stderr.log with --keep)"}})

    if noisy:
        rss = noisy["peak_rss_kib"]
        print(
            f"an agent printing {args.noisy_mib} MiB: {noisy['status'] or '-'}, runner peak RSS "
            + (f"{rss / 1024.0:.1f} MiB" if rss is not None else "-"),
            file=out,
        )
        if not succeeded(noisy):
            failed.append(noisy)

    if setup:
        print(file=out)
        print("set-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()), file=out)

    if failed:
        print(file=out)
        print(f"FAILED: {len(failed)} run(s) did not succeed:", file=out)
        for r in failed:
            err = r["error"] or {}
            what = "warm-up" if r["name"] == "warmup" else r["name"]
            print(
                f"  {what} (branch {r['branch']}, run {r['run_id'] or '-'}): "
                f"status {r['status'] or '-'}, exit {r['exit_code']}",
                file=out,
            )
            if err:
                print(f"    error {err.get('code', '?')}: {err.get('message', '')}", file=out)
                if err.get("remediation"):
                    print(f"    fix: {err['remediation']}", file=out)
                excerpt = (err.get("log_excerpt") or "").strip()
                if excerpt:
                    for line in excerpt.splitlines()[-10:]:
                        print(f"    | {line}", file=out)
            else:
                print("    (run.json has no error)", file=out)

    document = {
        "schema_version": 1,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "specrun_version": args.specrun_version,
        "runs_requested": args.runs,
        "runs_succeeded": len(good),
        "agent": "scripted",
        "publish": "branch",
        "image": {"tag": args.image, "id": args.image_id},
        "repo_files": args.repo_files,
        "units": {"durations": "ms", "rss": "MiB"},
        "phases": phase_stats,
        "phase_status": phase_status,
        "sum_of_phases_ms": phase_sum,
        "in_run_total_ms": in_run,
        "run_wall_ms": wall,
        "runner_peak_rss_mib": (
            {"max": max(rss_mib), "mean": statistics.fmean(rss_mib), "values": rss_mib}
            if rss_mib
            else None
        ),
        "floor_ms": floors,
        "floor_total_ms": floor,
        "ratio_to_floor": ratio,
        "share_of_wall": shares,
        "host_cpu_ms": host_cpu,
        "requests_per_run": counts,
        "concurrent": concurrent,
        "noisy": noisy,
        "one_process_batch": batch,
        "setup_s": setup,
        "bench_elapsed_s_before_report": (
            (args.bench_now_us - args.bench_start_us) / 1e6
            if args.bench_start_us and args.bench_now_us
            else None
        ),
        "warmup": warmup,
        "runs": runs,
        "failures": [
            {
                "run": r["name"],
                "branch": r["branch"],
                "run_id": r["run_id"],
                "status": r["status"],
                "exit_code": r["exit_code"],
                "error": r["error"],
            }
            for r in failed
        ],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp_out, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
