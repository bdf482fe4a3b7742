"""bench/compare.py: the orchestrator of the pyrepl3-vs-Jupyter benchmark (run it via bench/run).

Owns: resolving the interpreter, starting both drivers (bench/README.md has their protocol),
running every case on both sides in alternating rounds (A B A B ...), and the report: one
table on stdout (markdown, ready to paste into docs/benchmarks.md) and the same data as JSON
in bench/results/latest.json (ignored by git, never tracked). Progress and driver trouble go
to stderr.

Standard library only. Environment: PYREPL3_BENCH_DRIVER replaces the pyrepl3 driver command
(split like a shell would; e.g. a fake driver while working on the harness).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, "results", "latest.json")

SETUP_TIMEOUT = 120.0  # seconds for a driver to answer `setup`
RUN_TIMEOUT = 600.0  # seconds for one `run` request (on top of the idle window for `idle`)


@dataclass(frozen=True)
class Plan:
    """How a case is run: `rounds` alternating rounds of `n` samples per side, or (`once`)
    one request per side, one side after the other."""

    rounds: int
    n: int
    once: bool = False


# Full and --quick plans, in the order the cases run and the table lists them.
PLANS: dict[str, tuple[Plan, Plan]] = {
    "roundtrip": (Plan(10, 200), Plan(10, 40)),
    "cold_start": (Plan(10, 2), Plan(2, 2)),
    "print_lines": (Plan(5, 2), Plan(2, 1)),
    "print_10mb": (Plan(5, 2), Plan(2, 1)),
    "first_output": (Plan(10, 20), Plan(10, 4)),
    "interrupt_busy": (Plan(10, 2), Plan(5, 2)),
    "interrupt_sleep": (Plan(10, 2), Plan(5, 2)),
    "input": (Plan(10, 20), Plan(10, 4)),
    "idle": (Plan(1, 1, once=True), Plan(1, 1, once=True)),
    "memory": (Plan(1, 1, once=True), Plan(1, 1, once=True)),
    "pool_acquire": (Plan(10, 200), Plan(10, 40)),
    "concurrent": (Plan(1, 1, once=True), Plan(1, 1, once=True)),
}
IDLE_SECONDS = (30.0, 5.0)  # full, quick


# --- statistics and units -------------------------------------------------------------------


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    s = sorted(xs)
    return {
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "mean": sum(s) / len(s),
        "n": len(s),
    }


def fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def fmt_bytes(n: float) -> str:
    if n < 1e6:
        return f"{n / 1e3:.3g} kB"
    return f"{n / 1e6:.3g} MB"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None:
        return "—"
    if den == 0:
        return "—"  # e.g. idle CPU time below the 10 ms clock tick
    r = num / den
    return f"{r:.3g}×"


def total(value: Any) -> float | None:
    """An idle extra is {process: value} (summed) or a plain number."""
    if isinstance(value, dict):
        return sum(float(v) for v in value.values())
    if isinstance(value, (int, float)):
        return float(value)
    return None


# --- drivers --------------------------------------------------------------------------------


class DriverError(Exception):
    """The driver process is unusable (did not start, died, hung or spoke garbage)."""


class Driver:
    """One driver process, spoken to with JSON lines; restarted once after it breaks."""

    def __init__(self, label: str, argv: list[str], log_path: str):
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.info: dict = {}
        self.python = ""
        self.broken: str | None = None  # why it is gone for good

    def start(self, python: str) -> dict:
        self.python = python
        self.buf = b""
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT
                )
            except OSError as e:
                raise DriverError(f"cannot start {shlex.join(self.argv)}: {e}") from e
        reply = self.request({"cmd": "setup", "python": python}, SETUP_TIMEOUT)
        if not reply.get("ok"):
            self.stop(grace=5)
            raise DriverError(f"setup failed: {reply.get('error', reply)}")
        self.info = reply
        return reply

    def request(self, obj: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            raise DriverError(self.exit_story("is not running"))
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise DriverError(self.exit_story("closed its stdin")) from None
        line = self.readline(timeout)
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise DriverError(f"replied with a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise DriverError(f"replied with JSON that is not an object: {line[:200]!r}")
        return reply

    def readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DriverError(f"no reply within {timeout:.0f} s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise DriverError(self.exit_story("closed its stdout"))
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace")

    def exit_story(self, what: str) -> str:
        status = ""
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=5)
                status = f", exit status {rc}"
            except subprocess.TimeoutExpired:
                pass
        return f"{what}{status}\n  last lines of {self.log_path}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "".join("    " + line for line in tail).rstrip() or "    (empty)"

    def stop(self, grace: float = 60.0) -> None:
        """quit, then SIGTERM, then SIGKILL; `grace` lets the Jupyter driver shut its kernels down."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.write(b'{"cmd": "quit"}\n')
            proc.stdin.close()
        except OSError:
            pass
        for action, wait in ((None, grace), (proc.terminate, 10.0), (proc.kill, 10.0)):
            if action is not None:
                action()
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def run(self, case: str, n: int, extra_fields: dict, timeout: float) -> dict:
        """One `run` request. A broken driver is restarted (once per breakage) and the request
        reported as failed; the caller sees a protocol reply either way."""
        if self.broken:
            return {"ok": False, "error": f"driver gone: {self.broken}"}
        try:
            return self.request({"cmd": "run", "case": case, "n": n, **extra_fields}, timeout)
        except DriverError as e:
            error = f"driver failed: {e}"
        print(f"[bench] {self.label} {error}\n[bench] restarting the {self.label} driver", file=sys.stderr)
        self.stop(grace=10)
        try:
            self.start(self.python)
        except DriverError as e:
            self.broken = f"could not restart: {e}"
        return {"ok": False, "error": error}


# --- running cases --------------------------------------------------------------------------


@dataclass
class Side:
    """What one driver produced for one case."""

    samples: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    error: str | None = None
    unsupported: bool = False

    @property
    def done(self) -> bool:
        return self.unsupported or self.error is not None

    def add(self, reply: dict) -> None:
        wrapped = [k for k, v in (reply.get("extra") or {}).items() if isinstance(v, int) and v >= 2**63]
        if reply.get("ok") and wrapped:  # an unsigned difference that went below zero
            reply = {"ok": False, "error": f"implausible {', '.join(wrapped)} (an unsigned count wrapped below zero)"}
        if not reply.get("ok"):
            err = str(reply.get("error", "failed without a message"))
            if err.startswith("unsupported"):
                self.unsupported = True
            else:
                self.error = err
            return
        self.samples.extend(float(x) for x in reply.get("samples", []))
        for key, value in (reply.get("extra") or {}).items():
            if isinstance(value, list) and isinstance(self.extra.get(key, []), list):
                self.extra.setdefault(key, []).extend(value)  # per-sample lists, e.g. input's total
            else:
                self.extra[key] = value

    def to_json(self) -> dict:
        status = "unsupported" if self.unsupported else "error" if self.error else "ok"
        out: dict[str, Any] = {"status": status}
        if self.error:
            out["error"] = self.error
        if self.samples:
            out["stats"] = stats(self.samples)
        extra = {}
        for key, value in self.extra.items():
            is_numbers = isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
            extra[key] = stats(value) if is_numbers else value
        if extra:
            out["extra"] = extra
        return out


def thread_counters(pid: int) -> dict[int, tuple[int, int]]:
    """{tid: (context switches, CPU ticks)} of every thread of `pid`, from /proc."""
    counters = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return counters
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                ctx = sum(int(line.split()[1]) for line in f
                          if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            counters[int(tid)] = (ctx, int(fields[11]) + int(fields[12]))  # utime + stime
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return counters


def measure_idle_outside(drivers: list[Driver], seconds: float) -> dict[str, Side]:
    """Idle cost, observed from this process: each driver names its processes (client or
    host, worker or kernel), all sit idle with their session/kernel attached, and /proc is
    read before and after the window, per thread id (a thread that starts counts from zero;
    one that ends is lost, never negative). A process that measured itself would wake up to
    do it."""
    sides = {d.label: Side() for d in drivers}
    watched: dict[str, dict[str, int]] = {}
    for d in drivers:
        reply = d.run("pids", 1, {}, RUN_TIMEOUT)
        if reply.get("ok"):
            watched[d.label] = {name: int(pid) for name, pid in (reply.get("extra") or {}).items()}
        else:
            sides[d.label].add(reply)
    before = {label: {name: thread_counters(pid) for name, pid in procs.items()}
              for label, procs in watched.items()}
    time.sleep(seconds)  # the measurement window itself: every watched process is left alone
    tick = os.sysconf("SC_CLK_TCK")
    for label, procs in watched.items():
        ctx, cpu = {}, {}
        for name, pid in procs.items():
            now = thread_counters(pid)
            then = before[label][name]
            ctx[name] = sum(max(c - then.get(t, (0, 0))[0], 0) for t, (c, _) in now.items())
            cpu[name] = round(sum(max(u - then.get(t, (0, 0))[1], 0) for t, (_, u) in now.items()) / tick, 3)
        sides[label].add({"ok": True, "samples": [], "extra": {
            "seconds": seconds,
            "ctx_switches": sum(ctx.values()),
            "per_process": ctx,
            "cpu_seconds": round(sum(cpu.values()), 3),
            "cpu_per_process": cpu,
        }})
    return sides


def run_case(case: str, plan: Plan, drivers: list[Driver], idle_seconds: float) -> dict[str, Side]:
    if case == "idle":
        return measure_idle_outside(drivers, idle_seconds)
    sides = {d.label: Side() for d in drivers}
    fields = {"seconds": idle_seconds} if case == "idle" else {}
    timeout = RUN_TIMEOUT + (idle_seconds if case == "idle" else 0)
    if plan.once:
        for d in drivers:
            sides[d.label].add(d.run(case, plan.n, fields, timeout))
        return sides
    for _ in range(plan.rounds):
        for d in drivers:  # A B A B ...: machine noise hits both sides alike
            side = sides[d.label]
            if not side.done:
                side.add(d.run(case, plan.n, fields, timeout))
        if all(s.done for s in sides.values()):
            break
    return sides


# --- the report -----------------------------------------------------------------------------


def host_info() -> dict:
    """The machine the figures were made on, so that every published figure names its host:
    hostname, CPU model (/proc/cpuinfo), cores, memory (/proc/meminfo), kernel (uname -r),
    Python version, and a one-line summary of them."""
    u = os.uname()
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    cores_text = f"{cores} cores" + (f" ({usable} usable)" if usable != cores else "")
    memory_text = f"{memory / 1e9:.1f} GB RAM" if memory else "unknown RAM"
    info = {
        "hostname": u.nodename,
        "cpu": cpu,
        "cores": cores,
        "cores_usable": usable,
        "memory_bytes": memory,
        "kernel": u.release,
        "os": f"{u.sysname} {u.machine}",
        "python_version": platform.python_version(),
    }
    info["summary"] = (f"{u.nodename}, {cpu}, {cores_text}, {memory_text}, "
                       f"{u.sysname} {u.release} {u.machine}, Python {info['python_version']}")
    return info


def header(python: str, quick: bool, drivers: list[Driver]) -> dict:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if quick else "full",
        "host": host_info(),
        "python": python,
        "python_real": os.path.realpath(python),
        "jupyter_client": version("jupyter_client"),
        "ipykernel": version("ipykernel"),
        "drivers": {d.label: {"argv": d.argv, **d.info} for d in drivers},
    }


def build_rows(results: dict[str, dict[str, Side]], idle_seconds: float) -> list[list[str]]:
    """Table rows: [what, pyrepl3, Jupyter, ratio]."""
    rows: list[list[str]] = []

    def cell(side: Side | None, text: str | None, derived: bool = False) -> str:
        if side is None or side.unsupported:
            return "—"
        if side.error:
            if derived:  # the case's first row already shows the error
                return "error"
            first = side.error.splitlines()[0]
            return "error: " + (first if len(first) <= 60 else first[:57] + "...")
        return text if text is not None else "—"

    def timed(label, p: Side, j: Side, p_xs, j_xs, derived: bool = False) -> None:
        ps, js = stats(p_xs), stats(j_xs)
        fmt = lambda s: f"{fmt_time(s['p50'])} / {fmt_time(s['p99'])}" if s else None
        ratio = fmt_ratio(js and js["p50"], ps and ps["p50"]) if not (p.error or j.error) else "—"
        rows.append([label, cell(p, fmt(ps), derived), cell(j, fmt(js), derived), ratio])

    def valued(label, p: Side, j: Side, pv, jv, fmt, higher_is_better=False, derived=False) -> None:
        if p.error or j.error:
            ratio = "—"
        else:
            ratio = fmt_ratio(pv, jv) if higher_is_better else fmt_ratio(jv, pv)
        rows.append([
            label,
            cell(p, None if pv is None else fmt(pv), derived),
            cell(j, None if jv is None else fmt(jv), derived),
            ratio,
        ])

    for case, sides in results.items():
        p, j = sides["pyrepl3"], sides["jupyter"]
        if case == "idle":
            span = f"{idle_seconds:g} s"
            valued(f"idle: context switches / {span}", p, j,
                   total(p.extra.get("ctx_switches")), total(j.extra.get("ctx_switches")),
                   lambda v: f"{v:.0f}")
            valued(f"idle: CPU time / {span}", p, j,
                   total(p.extra.get("cpu_seconds")), total(j.extra.get("cpu_seconds")),
                   lambda v: f"{v * 1e3:.0f} ms", derived=True)
        elif case == "memory":
            valued("memory: session (worker RSS + supervisor's own pages) / kernel RSS", p, j,
                   p.extra.get("worker_rss"), j.extra.get("worker_rss"), fmt_bytes)
            for key, label in (("supervisor_private", "memory: of which the supervisor's own pages"),("host_rss_1", "memory: host RSS, 1 session"),
                               ("host_rss_50", "memory: host RSS, 50 sessions"),
                               ("host_per_session", "memory: host RSS per session")):
                if key in p.extra:
                    valued(label, p, Side(unsupported=True), p.extra[key], None, fmt_bytes, derived=True)
        elif case == "concurrent":
            wall = lambda s: s.extra.get("wall_seconds", s.samples[0] if s.samples else None)
            valued("concurrent: 100 sessions × 20 runs, wall", p, j, wall(p), wall(j), fmt_time)
            if "host_rss" in p.extra or "host_rss" in j.extra:
                valued("concurrent: host RSS", p, j,
                       p.extra.get("host_rss"), j.extra.get("host_rss"), fmt_bytes, derived=True)
        elif case == "cold_start":
            # Each sample: a new session/kernel, until the result of its first `1+1`.
            timed("cold_start: new session/kernel → first 1+1 result", p, j, p.samples, j.samples)
            timed("cold_start: of which start → ready", p, j,
                  p.extra.get("ready", []), j.extra.get("ready", []), derived=True)
            if p.extra.get("bare") and p.samples:
                none = Side(unsupported=True)
                timed("cold_start: bare interpreter, python -c pass (reference)", p, none,
                      p.extra["bare"], [], derived=True)
                multiple = stats(p.samples)["p50"] / stats(p.extra["bare"])["p50"]
                rows.append(["cold_start: pyrepl3 first result / bare interpreter (p50)",
                             f"{multiple:.2f}×", "—", "—"])
        else:
            timed(case, p, j, p.samples, j.samples)
            if case == "input":
                timed("input (execute to result)", p, j,
                      p.extra.get("total", []), j.extra.get("total", []), derived=True)
            if case in ("print_lines", "print_10mb"):
                rate = lambda s: (s.extra["bytes"] / stats(s.samples)["p50"]
                                  if s.samples and s.extra.get("bytes") else None)
                valued(f"{case}: output rate at p50", p, j, rate(p), rate(j),
                       lambda v: fmt_bytes(v) + "/s", higher_is_better=True, derived=True)
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    head = ["case", "pyrepl3 p50 / p99", "Jupyter p50 / p99", "ratio"]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(r) for r in rows])


def report_text(h: dict, rows: list[list[str]]) -> str:
    p_info = h["drivers"].get("pyrepl3", {})
    lines = [
        f"pyrepl3 vs Jupyter, {h['date']} ({h['mode']} run)",
        f"host: {h['host']['summary']}",
        f"python {h['host']['python_version']}: {h['python']} -> {h['python_real']} (both sides)",
        f"pyrepl3: {p_info.get('version', '?')}; jupyter_client {h['jupyter_client']}, "
        f"ipykernel {h['ipykernel']}",
        "",
        markdown_table(rows),
        "",
        "ratio: Jupyter / pyrepl3 (p50 for times; the values for idle and memory);"
        " output rate: pyrepl3 / Jupyter. Above 1 favours pyrepl3. —: not measured on that side, or no ratio.",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Runs pyrepl3 and Jupyter side by side (see bench/README.md).")
    ap.add_argument("--quick", action="store_true", help="about 1/5 of the samples, a 5 s idle window")
    ap.add_argument("--cases", help="comma-separated subset, of: " + ",".join(PLANS))
    ap.add_argument("--json", default=RESULTS, help=f"where to write the JSON report (default {RESULTS})")
    args = ap.parse_args(argv)
    if args.cases:
        args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in args.case_list if c not in PLANS]
        if unknown:
            ap.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(PLANS)}")
    else:
        args.case_list = list(PLANS)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # The interpreter both sides run: this venv's python. Its path is given to both drivers
    # (pyrepl3 asks it for sys.executable; the ipykernel is started with it), so both run the
    # same binary with the same site-packages and no launcher shim; the real binary is reported.
    python = os.path.abspath(sys.executable)

    pyrepl3_cmd = os.environ.get("PYREPL3_BENCH_DRIVER")
    pyrepl3_argv = (shlex.split(pyrepl3_cmd) if pyrepl3_cmd
                    else [os.path.join(ROOT, "target", "release", "examples", "bench_driver")])
    jupyter_argv = [python, os.path.join(BENCH, "jupyter_driver.py")]
    idle_seconds = IDLE_SECONDS[1 if args.quick else 0]
    logs = tempfile.mkdtemp(prefix="pyrepl3-bench-logs-")
    drivers = [
        Driver("pyrepl3", pyrepl3_argv, os.path.join(logs, "pyrepl3.log")),
        Driver("jupyter", jupyter_argv, os.path.join(logs, "jupyter.log")),
    ]
    print(f"[bench] python {python} -> {os.path.realpath(python)}; driver logs in {logs}", file=sys.stderr)

    try:
        for d in drivers:
            try:
                d.start(python)
            except DriverError as e:
                print(f"bench: the {d.label} driver ({shlex.join(d.argv)}) did not start: {e}", file=sys.stderr)
                return 1
            print(f"[bench] {d.label} driver ready: {d.info.get('version', '?')}", file=sys.stderr)

        results: dict[str, dict[str, Side]] = {}
        for case in args.case_list:
            plan = PLANS[case][1 if args.quick else 0]
            t0 = time.monotonic()
            results[case] = run_case(case, plan, drivers, idle_seconds)
            states = ", ".join(
                f"{label} " + ("unsupported" if s.unsupported else "error" if s.error else f"{len(s.samples)} samples")
                for label, s in results[case].items()
            )
            print(f"[bench] {case}: {time.monotonic() - t0:.1f} s ({states})", file=sys.stderr)
    finally:
        for d in drivers:
            d.stop()

    h = header(python, args.quick, drivers)
    h["idle_seconds"] = idle_seconds
    rows = build_rows(results, idle_seconds)
    print(report_text(h, rows))

    report = {
        "header": h,
        "cases": {
            case: {
                **{label: side.to_json() for label, side in sides.items()},
                "ratio": ratio_value(case, sides),
            }
            for case, sides in results.items()
        },
        "table": [dict(zip(["case", "pyrepl3", "jupyter", "ratio"], r)) for r in rows],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"[bench] wrote {args.json}", file=sys.stderr)
    if any(side.error for sides in results.values() for side in sides.values()):
        print(f"[bench] some cases failed; driver logs kept in {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


def ratio_value(case: str, sides: dict[str, Side]) -> float | None:
    """The case's headline ratio as a number: Jupyter / pyrepl3 of the p50 (times), of the
    context switches (idle) or of the worker RSS (memory)."""
    p, j = sides["pyrepl3"], sides["jupyter"]
    if p.error or j.error:
        return None
    if case == "idle":
        pv, jv = total(p.extra.get("ctx_switches")), total(j.extra.get("ctx_switches"))
    elif case == "memory":
        pv, jv = p.extra.get("worker_rss"), j.extra.get("worker_rss")
    else:
        ps, js = stats(p.samples), stats(j.samples)
        pv, jv = ps and ps["p50"], js and js["p50"]
    if pv and jv is not None:
        return jv / pv
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
