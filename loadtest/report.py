"""Reports: the summary of a run (from its merged HDR histograms), a JSON file, a PNG plot,
the service's batch sizes scraped from its Prometheus /metrics, and the knee search.

The summary always satisfies ``sent == answered + errors`` (``check_counts`` asserts it).
"""
from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.request
from pathlib import Path

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _pct_ms(hist, p: float) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return round(hist.get_value_at_percentile(p) / 1000.0, 3)


def latency_summary(hist) -> dict:
    out = {f"p{p:g}": _pct_ms(hist, p) for p in PERCENTILES}
    n = hist.get_total_count()
    out["max"] = round(hist.get_max_value() / 1000.0, 3) if n else None
    out["min"] = round(hist.get_min_value() / 1000.0, 3) if n else None
    out["mean"] = round(hist.get_mean_value() / 1000.0, 3) if n else None
    out["count"] = n
    return out


# ---- Prometheus scrape ----------------------------------------------------------------------
def scrape(url: str, timeout: float = 5.0) -> dict:
    """Histograms and counters of interest from a /metrics page: {name: {...}}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:  # 127.0.0.1 only, by the caller's choice
        text = r.read().decode("utf-8")
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


def batch_sizes(before: dict | None, after: dict | None) -> dict | None:
    """Server-side micro-batch sizes during the run (difference of two scrapes)."""
    if not after:
        return None
    before = before or {}

    def d(k):
        return after.get(k, 0.0) - before.get(k, 0.0)

    count = d("yujing_batch_size_count")
    total = d("yujing_batch_size_sum")
    buckets = []
    for k in after:
        if k.startswith("yujing_batch_size_bucket{"):
            le = k.split("le=", 1)[1].rstrip("}")
            buckets.append((float("inf") if le in ("+Inf", "inf") else float(le), d(k)))
    buckets.sort()
    hist = {}
    prev = 0.0
    for le, cum in buckets:
        hist["+Inf" if le == float("inf") else f"{le:g}"] = int(cum - prev)
        prev = cum

    def q(p):
        if count <= 0:
            return None
        for le, cum in buckets:
            if cum >= p * count:
                return le
        return None

    out = {"batches": int(count), "turns": int(total), "mean": round(total / count, 2) if count else None,
           "p50_le": q(0.5), "p99_le": q(0.99), "by_bucket_le": hist}
    for key in ("yujing_live_sessions", "yujing_session_evictions_total", "yujing_session_expirations_total",
                "yujing_fallback_active"):
        if key in after:
            out[key.removeprefix("yujing_")] = after[key]
    return out


# ---- what ran --------------------------------------------------------------------------------
def code_version() -> dict:
    """The commit of the code that ran: ``git rev-parse --short HEAD`` when this file sits in a
    git checkout that tracks it, else the installed package version."""
    here = Path(__file__).resolve().parent

    def git(*args):
        r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else None

    try:
        # ls-files: this very file is tracked (not a wheel inside some other repository's venv)
        if git("ls-files", "--error-unmatch", Path(__file__).name) is not None:
            h = git("rev-parse", "--short", "HEAD")
            if h:
                return {"commit": h, "commit_source": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version
        return {"commit": version("yujing"), "commit_source": "package version"}
    except Exception:  # noqa: BLE001 - a report without a version beats no report
        return {"commit": "unknown", "commit_source": "unknown"}


def run_settings(spec: dict, p99_target_ms: float | None = None, metrics_url: str | None = None) -> dict:
    """The knobs of one run, as the figure's title and ``report.json["settings"]`` show them."""
    mode = spec["mode"]
    concurrent = None
    if not spec.get("turns_file"):  # generated traffic: conversations live at once (traffic.py's default)
        concurrent = max(1, min(spec.get("concurrent") or min(spec["sessions"], 2000), spec["sessions"]))
    return {
        "target": spec["target"], "mode": mode, "target_rate": spec["rate"], "duration_s": spec["duration"],
        "arrival": spec["arrival"], "sessions": spec["sessions"], "concurrent": concurrent,
        "processes": spec["processes"], "streams": spec["streams"] if mode == "stream" else None,
        "batch_size": spec["batch_size"] if mode == "batch" else None,
        "batch_linger_ms": spec["batch_linger_ms"] if mode == "batch" else None,
        "turns_file": spec.get("turns_file"), "max_turns": spec.get("max_turns"), "seed": spec["seed"],
        "timeout_s": spec["timeout_s"], "drain_s": spec["drain_s"], "max_lag_ms": spec["max_lag_ms"],
        "p99_target_ms": p99_target_ms, "metrics_url": metrics_url,
    }


# ---- series ----------------------------------------------------------------------------------
def send_span_s(spec: dict, raw: dict | None = None) -> float:
    """Seconds the schedule sent for, from the scheduled start: what the runner measured
    (``schedule_span_s``: through the last intended send, every process), else ``duration``
    or less when ``max_turns`` ends it first."""
    if raw is not None and raw.get("schedule_span_s"):
        return float(raw["schedule_span_s"])
    span = float(spec["duration"])
    if spec.get("max_turns"):
        span = min(span, spec["max_turns"] / spec["rate"])
    return span


def throughput_series(per_second: list[dict], span: float) -> dict:
    """Per-second sent/answered/errors over the whole seconds of the send schedule only.

    Buckets are 1 s from the scheduled start (so the first is always whole). A bucket the
    schedule covers only in part (the last one of a 2.5 s run, or of a Poisson schedule that
    ran out of turns at 11.8 s) and the drain after the last send would read as a throughput
    collapse: they are dropped. A run shorter than 1 s has
    no whole bucket; its one bucket is then scaled to a per-second rate (``scaled``)."""
    by_s = {p["second"]: p for p in per_second}
    full = int(math.floor(span + 1e-6))
    zero = {"sent": 0, "answered": 0, "errors": 0}
    points, scaled = [], False
    if full >= 1:
        for k in range(full):
            v = by_s.get(k, zero)
            points.append({"second": k, "sent": v["sent"], "answered": v["answered"], "errors": v["errors"]})
    elif span > 0:
        v, scaled = by_s.get(0, zero), True
        points.append({"second": 0, **{k: round(v[k] / span, 2) for k in ("sent", "answered", "errors")},
                       "scale": round(1.0 / span, 4)})
    dropped = sorted(s for s in by_s if s >= full) if full >= 1 else sorted(s for s in by_s if s >= 1)
    return {"bucket_s": 1.0, "send_span_s": round(span, 3), "full_buckets": full, "partial_bucket":
            "scaled" if scaled else "dropped", "dropped_seconds": dropped, "points": points}


CDF_MAX_NINES = 6.0


def latency_cdf(hist) -> dict:
    """The latency CDF from the HDR histogram: latency at percentiles evenly spaced in "nines"
    (-log10(1 - p/100)) up to the histogram's resolution (1 in ``count``), then the max."""
    n = hist.get_total_count()
    if n == 0:
        return {"axis": "nines", "count": 0, "points": []}
    top = min(CDF_MAX_NINES, math.log10(n)) if n > 1 else 0.0
    pcts = {round(100.0 * (1.0 - 10.0 ** (-k / 20.0)), 6) for k in range(int(top * 20) + 1)}
    pcts |= set(PERCENTILES)  # the summary's own percentiles, always (as latency_ms has them)
    pcts |= {p for p in (99.99, 99.999) if -math.log10(1 - p / 100) <= top + 1e-9}
    pts = [{"percentile": p, "latency_ms": _pct_ms(hist, p)} for p in sorted(pcts)]
    pts.append({"percentile": 100.0, "latency_ms": round(hist.get_max_value() / 1000.0, 3)})
    return {"axis": "nines", "count": n, "resolution_nines": round(top, 3), "points": pts}


def errors_by_status(errors_by_code: dict, sent: int) -> list[dict]:
    """Errors per gRPC status (or CLIENT_* for client-side failures), most first, with their share."""
    rows = sorted(errors_by_code.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"status": k, "count": v, "share_of_sent": round(v / sent, 5) if sent else None} for k, v in rows]


# ---- summary ---------------------------------------------------------------------------------
def summarize(raw: dict, metrics_before: dict | None = None, metrics_after: dict | None = None, *,
              p99_target_ms: float | None = None, metrics_url: str | None = None) -> dict:
    errors_total = sum(raw["errors"].values())
    spec = raw["spec"]
    window = max(1e-9, raw.get("send_window_s") or spec["duration"])
    per_second = []
    for s in sorted(raw["per_second"]):
        v = raw["per_second"][s]
        h = v["hist"]
        per_second.append({"second": s, "sent": v["sent"], "answered": v["answered"], "errors": v["errors"],
                           "p50_ms": _pct_ms(h, 50), "p90_ms": _pct_ms(h, 90), "p99_ms": _pct_ms(h, 99),
                           "max_ms": round(h.get_max_value() / 1000.0, 3) if h.get_total_count() else None})
    lat = latency_summary(raw["hist"])
    kept_up = not raw["generator_bottleneck"]
    rep = {
        "tool": "yujing loadtest", "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": spec["target"], "mode": spec["mode"], "arrival": spec["arrival"],
        "target_rate": spec["rate"], "duration_s": spec["duration"], "processes": raw["processes"],
        "sessions": spec["sessions"], "batch_size": spec["batch_size"] if spec["mode"] == "batch" else None,
        "streams": spec["streams"] if spec["mode"] == "stream" else None, "turns_file": spec["turns_file"],
        "planned": raw["planned"], "sent": raw["sent"], "answered": raw["answered"], "errors": errors_total,
        "errors_by_code": dict(sorted(raw["errors"].items())),
        "throughput": {"achieved_send_rate": round(raw["achieved_send_rate"], 2),
                       "answered_per_s": round(raw["answered"] / window, 2)},
        "latency_ms": lat,
        "latency_measured_from": "intended send time (open loop, no coordinated omission)",
        "generator": {"bottleneck": raw["generator_bottleneck"], "warnings": raw["generator_warnings"],
                      "send_lag_p99_ms": round(raw["lag_p99_ms"], 3), "send_lag_max_ms": round(raw["lag_max_ms"], 3),
                      "client_cpu_max_fraction": round(raw["client_cpu_max_fraction"], 3),
                      "kept_up": kept_up, "exit_status": 0 if kept_up else 3},
        "client_batches_sent": raw.get("batches_sent"),
        "server_batches": batch_sizes(metrics_before, metrics_after),
        "per_second": per_second,
        # added fields (everything above keeps its name and meaning)
        "settings": run_settings(spec, p99_target_ms, metrics_url),
        **code_version(),
        "generator_kept_up": kept_up,
        "p99_target_ms": p99_target_ms,
        "p99_target_met": (None if p99_target_ms is None else
                           lat["p99"] is not None and lat["p99"] <= p99_target_ms),
        "errors_by_status": errors_by_status(raw["errors"], raw["sent"]),
        "latency_cdf": latency_cdf(raw["hist"]),
        "throughput_series": throughput_series(per_second, send_span_s(spec, raw)),
    }
    check_counts(rep)
    return rep


def check_counts(rep: dict) -> None:
    if rep["sent"] != rep["answered"] + rep["errors"]:
        raise AssertionError(f"report counts do not add up: sent {rep['sent']} != answered "
                             f"{rep['answered']} + errors {rep['errors']}")
    if rep["errors"] != sum(rep["errors_by_code"].values()):
        raise AssertionError("errors != sum of errors_by_code")


def write_json(rep: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=2, ensure_ascii=False, default=str))
    return path


def _fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g} ms" if v < 100 else f"{v:,.0f} ms"


def title_lines(rep: dict) -> list[str]:
    """The figure's title: what ran (settings, commit), then the headline numbers."""
    st = rep.get("settings") or {  # a report from before "settings" existed
        "mode": rep["mode"], "target": rep["target"], "target_rate": rep["target_rate"], "arrival": rep["arrival"],
        "duration_s": rep["duration_s"], "sessions": rep["sessions"], "streams": rep.get("streams"),
        "batch_size": rep.get("batch_size"), "batch_linger_ms": None, "turns_file": rep.get("turns_file")}
    mode = st["mode"]
    knobs = [f"{st['sessions']:,} sessions"]
    if st.get("concurrent"):
        knobs.append(f"{st['concurrent']:,} concurrent")
    if mode == "stream":
        knobs.append(f"{st['streams']} streams")
    if mode == "batch":
        linger = st.get("batch_linger_ms")
        knobs.append(f"batch size {st['batch_size']}" + (f" (linger {linger:g} ms)" if linger is not None else ""))
    knobs.append(f"{rep['processes']} process" + ("es" if rep["processes"] != 1 else ""))
    if st.get("turns_file"):
        knobs.append(f"turns from {Path(st['turns_file']).name}")
    line1 = (f"yujing loadtest  {mode}  {st['target_rate']:g}/s {st['arrival']} for {st['duration_s']:g} s  "
             f"->  {st['target']}    commit {rep.get('commit', '?')}")
    line2 = "  ·  ".join(knobs)
    lat = rep["latency_ms"]
    err_share = f" ({rep['errors'] / rep['sent']:.1%})" if rep["sent"] and rep["errors"] else ""
    line3 = (f"sent {rep['sent']:,}  answered {rep['answered']:,}  errors {rep['errors']:,}{err_share}   "
             f"latency p50 {_fmt_ms(lat['p50'])}  p99 {_fmt_ms(lat['p99'])}  p99.9 {_fmt_ms(lat['p99.9'])}  "
             f"max {_fmt_ms(lat['max'])}")
    if rep.get("p99_target_ms") is not None:
        met = rep.get("p99_target_met")
        line3 += f"   (p99 target {rep['p99_target_ms']:g} ms: {'met' if met else 'MISSED'})"
    return [line1, line2, line3]


def _plain_log_ticks(axis) -> None:
    """Plain numbers (20, 30, 0.5) on a log axis instead of 2x10^1."""
    import matplotlib.ticker as T

    class Plain(T.LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    axis.set_major_formatter(Plain(labelOnlyBase=False))
    axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _nines(p: float, cap: float) -> float:
    return cap if p >= 100.0 else min(cap, -math.log10(1.0 - p / 100.0))


def plot_run(rep: dict, path) -> Path:
    """One figure an SRE reads at a glance (see the README's "Load testing"):

    title      settings, commit, headline numbers; a red banner when the generator was the
               bottleneck (the numbers then describe the client), else a green "kept up" line
    row 1      throughput per whole second: sent, answered, errors, the target rate line
    row 2      latency percentiles per second (log), the p99 target line
    row 3      the latency CDF from the HDR histogram (log-x, nines-y; p50/p99/p99.9 marked),
               errors by gRPC status, server micro-batch sizes (with --metrics-url)
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = rep.get("throughput_series") or throughput_series(rep["per_second"], float(rep["duration_s"]))
    span = ts["send_span_s"]
    target = rep.get("p99_target_ms")
    sb = rep.get("server_batches")
    has_batches = bool(sb and sb.get("batches"))
    kept_up = rep.get("generator_kept_up", not rep["generator"]["bottleneck"])

    fig = plt.figure(figsize=(14, 11.5))
    gs = fig.add_gridspec(3, 3 if has_batches else 2, height_ratios=[1, 1, 1.25],
                          width_ratios=[1.5, 1, 1] if has_batches else [1.6, 1],
                          left=0.06, right=0.98, bottom=0.06, top=0.83, hspace=0.42, wspace=0.22)
    ax_tp = fig.add_subplot(gs[0, :])
    ax_lat = fig.add_subplot(gs[1, :], sharex=ax_tp)
    ax_cdf = fig.add_subplot(gs[2, 0])
    ax_err = fig.add_subplot(gs[2, 1])
    ax_b = fig.add_subplot(gs[2, 2]) if has_batches else None

    # -- title and the generator banner
    t1, t2, t3 = title_lines(rep)
    fig.text(0.06, 0.975, t1, fontsize=13, weight="bold", va="top")
    fig.text(0.06, 0.948, t2, fontsize=10, va="top", color="0.25")
    fig.text(0.06, 0.925, t3, fontsize=10, va="top")
    g = rep["generator"]
    if kept_up:
        fig.text(0.06, 0.897, f"generator kept up: send lag p99 {g['send_lag_p99_ms']:g} ms, client CPU "
                 f"{g['client_cpu_max_fraction']:.0%} of a core; latency is measured from the intended send time",
                 fontsize=9.5, va="top", color="darkgreen")
    else:
        msg = ("GENERATOR WAS THE BOTTLENECK (exit 3): these numbers describe the load generator, not the "
               "service\n" + "; ".join(g["warnings"]))
        fig.text(0.06, 0.903, msg, fontsize=10.5, va="top", color="white", weight="bold",
                 bbox=dict(boxstyle="round,pad=0.4", facecolor="#c0392b", edgecolor="none"))

    # -- row 1: throughput over the whole seconds of the send schedule
    pts = ts["points"]
    ax_tp.axhline(rep["target_rate"], color="0.35", linestyle="--", linewidth=1.2,
                  label=f"target {rep['target_rate']:g}/s")
    if pts:  # one step per 1 s bucket (a scaled sub-second run: over the span it covers)
        edges = [p["second"] for p in pts] + [pts[-1]["second"] + (1 if ts["full_buckets"] else span)]
        for key, color, lw in (("sent", "tab:blue", 3.2), ("answered", "tab:green", 1.6), ("errors", "tab:red", 1.6)):
            ax_tp.stairs([p[key] for p in pts], edges, color=color, linewidth=lw, baseline=None,
                         alpha=0.55 if key == "sent" else 1.0, label=f"{key}/s")
    ymax = max([rep["target_rate"]] + [max(p["sent"], p["answered"], p["errors"]) for p in pts])
    ax_tp.set_ylim(0, ymax * 1.18)
    ax_tp.set_ylabel("turns per second")
    note = (f"whole 1 s buckets of the {span:g} s schedule; the partial last second and the drain are left out"
            if ts["partial_bucket"] == "dropped" else
            f"a {span:g} s run: its one partial bucket is scaled to a per-second rate")
    ax_tp.set_title("throughput  (" + note + ")", fontsize=10, loc="left")
    ax_tp.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=4, fontsize=9, frameon=False,
                 borderaxespad=0.1)
    ax_tp.grid(True, alpha=0.3)

    # -- row 2: latency percentiles per second, all seconds with answers (the drain shaded)
    ps = rep["per_second"]
    for key, style, color in (("p50_ms", "-", "tab:blue"), ("p90_ms", "-", "tab:cyan"),
                              ("p99_ms", "-", "tab:purple"), ("max_ms", ":", "0.4")):
        lp = [(p["second"] + 0.5, p[key]) for p in ps if p[key] is not None]
        if lp:
            ax_lat.plot([a for a, _ in lp], [b for _, b in lp], style, marker="o", ms=3, color=color,
                        label=key[:-3])
    if target is not None:
        ax_lat.axhline(target, color="tab:red", linestyle="--", linewidth=1.3, label=f"p99 target {target:g} ms")
    last = max([p["second"] + 1 for p in ps] + [math.ceil(span)])
    if last > span:
        for ax in (ax_tp, ax_lat):
            ax.axvspan(span, last, color="0.5", alpha=0.12, linewidth=0)
    ax_tp.set_xlim(0, last)
    ax_lat.set_yscale("log")
    _plain_log_ticks(ax_lat.yaxis)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_xlabel("seconds since the scheduled start")
    ax_lat.set_title("latency per second, from the intended send time" +
                     ("  (shaded: after the last send)" if last > span else ""), fontsize=10, loc="left")
    ax_lat.grid(True, which="both", alpha=0.3)
    if any(line.get_label().startswith("p") and "target" not in line.get_label() for line in ax_lat.get_lines()):
        ax_lat.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=5, fontsize=9, frameon=False,
                      borderaxespad=0.1)
    else:
        ax_lat.text(0.5, 0.5, "no answers", transform=ax_lat.transAxes, ha="center", va="center",
                    color="tab:red", fontsize=14)

    # -- row 3a: the latency CDF (log-x, nines-y)
    cdf = rep.get("latency_cdf") or {"points": [], "count": 0}
    cpts = [(p["percentile"], p["latency_ms"]) for p in cdf["points"] if p["latency_ms"] is not None]
    ax_cdf.set_title(f"latency CDF ({cdf.get('count', 0):,} answers, HDR histogram)", fontsize=10, loc="left")
    if cpts:
        cap = max(cdf.get("resolution_nines") or 0.0, 1.0)
        ax_cdf.plot([v for _, v in cpts], [_nines(p, cap) for p, _ in cpts], "-", color="tab:blue",
                    drawstyle="steps-post")
        ticks = [(math.log10(2), "50%"), (1, "90%"), (2, "99%"), (3, "99.9%"), (4, "99.99%"), (5, "99.999%"),
                 (6, "99.9999%")]
        ticks = [t for t in ticks if t[0] <= cap + 1e-9]
        ax_cdf.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks])
        ax_cdf.set_ylim(-0.05, cap + 0.25)
        if cap < 3:  # few answers: say where the histogram stops resolving percentiles
            res = 100.0 * (1.0 - 1.0 / cdf["count"])
            ax_cdf.set_title(f"latency CDF ({cdf['count']:,} answers, HDR histogram; above {res:.3g}%: the max)",
                             fontsize=10, loc="left")
        if target is not None:
            ax_cdf.axvline(target, color="tab:red", linestyle="--", linewidth=1.2)
            ax_cdf.text(target, 0.22, "p99 target ", transform=ax_cdf.get_xaxis_transform(), rotation=90,
                        fontsize=8, color="tab:red", ha="right", va="center")
        ax_cdf.set_xscale("log")
        _plain_log_ticks(ax_cdf.xaxis)
        lo, hi = (math.log10(x) for x in ax_cdf.get_xlim())
        lat = rep["latency_ms"]
        marks: dict = {}  # height -> [(name, latency)]: past the resolution p99 and p99.9 share the top
        for name in ("p50", "p99", "p99.9"):
            if lat.get(name) is not None:
                marks.setdefault(round(_nines(float(name[1:]), cap), 6), []).append((name, lat[name]))
        colors = {"p50": "tab:blue", "p99": "tab:purple", "p99.9": "tab:orange"}
        for y, group in marks.items():
            v = max(x for _, x in group)
            if len({x for _, x in group}) == 1:
                label = " = ".join(n for n, _ in group) + f" {_fmt_ms(v)}"
            else:
                label = ", ".join(f"{n} {_fmt_ms(x)}" for n, x in group)
            color = colors[group[0][0]]
            left = (math.log10(v) - lo) / max(1e-9, hi - lo) > 0.45   # the label on the roomier side
            for n, x in group:
                ax_cdf.plot([x], [y], "o", color=colors[n], ms=6, zorder=5)
            ax_cdf.annotate(label, (v, y), textcoords="offset points",
                            xytext=(-8, 2) if left else (8, -2), ha="right" if left else "left",
                            va="bottom" if left else "top", fontsize=9, color=color, weight="bold")
        ax_cdf.set_xlabel("latency (ms, log)")
        ax_cdf.set_ylabel("percentile")
        ax_cdf.grid(True, which="both", alpha=0.3)
    else:
        ax_cdf.text(0.5, 0.5, "no answers", transform=ax_cdf.transAxes, ha="center", va="center",
                    color="tab:red", fontsize=14)
        ax_cdf.set_xticks([])
        ax_cdf.set_yticks([])

    # -- row 3b: errors by status
    rows = rep.get("errors_by_status") or errors_by_status(rep["errors_by_code"], rep["sent"])
    ax_err.set_title(f"errors by gRPC status ({rep['errors']:,} of {rep['sent']:,} sent)", fontsize=10, loc="left")
    if rows:
        shown = rows[:8]
        if len(rows) > 8:
            shown = shown[:7] + [{"status": f"{len(rows) - 7} others", "count": sum(r["count"] for r in rows[7:]),
                                  "share_of_sent": None}]
        counts = [r["count"] for r in shown]
        ys = list(range(len(shown)))[::-1]          # most first, at the top
        ax_err.barh(ys, counts, height=0.45, color="tab:red", alpha=0.8)
        for y, r in zip(ys, shown):                 # the status above its bar: no long tick labels
            share = f" ({r['count'] / rep['sent']:.1%})" if rep["sent"] else ""
            ax_err.text(0, y + 0.26, " " + r["status"], va="bottom", ha="left", fontsize=9, weight="bold")
            ax_err.text(r["count"], y, f" {r['count']:,}{share}", va="center", fontsize=9)
        ax_err.set_yticks([])
        ax_err.set_ylim(-0.6, len(shown) - 0.1)
        ax_err.set_xlim(0, max(counts) * 1.45)
        ax_err.set_xlabel("turns")
        ax_err.grid(True, axis="x", alpha=0.3)
    else:
        ax_err.text(0.5, 0.5, "no errors", transform=ax_err.transAxes, ha="center", va="center",
                    color="darkgreen", fontsize=16, weight="bold")
        ax_err.set_xticks([])
        ax_err.set_yticks([])

    # -- row 3c: server batch sizes (scraped from --metrics-url)
    if ax_b is not None:
        hist = sb.get("by_bucket_le") or {}
        items = list(hist.items())
        nz = [i for i, (_, c) in enumerate(items) if c > 0]
        items = items[nz[0]:nz[-1] + 1] if nz else []
        ax_b.bar([f"≤{k}" if k != "+Inf" else ">max" for k, _ in items], [c for _, c in items], color="tab:olive")
        ax_b.set_title(f"server batch sizes ({sb['batches']:,} batches, mean {sb['mean']})", fontsize=10, loc="left")
        ax_b.set_xlabel("turns per server micro-batch")
        ax_b.set_ylabel("batches")
        ax_b.tick_params(axis="x", labelsize=8.5, rotation=45 if len(items) > 6 else 0)
        ax_b.grid(True, axis="y", alpha=0.3)

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_knee(knee: dict, path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = knee["steps"]
    fig, ax = plt.subplots(figsize=(8, 5))
    rates = [s["target_rate"] for s in steps]
    for key in ("p50", "p99", "p99.9"):
        ax.plot(rates, [s["latency_ms"][key] or float("nan") for s in steps], marker="o", label=key)
    ax.axhline(knee["p99_target_ms"], color="red", linestyle="--", label="p99 target")
    if knee.get("knee_rate"):
        ax.axvline(knee["knee_rate"], color="green", linestyle=":", label=f"knee {knee['knee_rate']:g}/s")
    ax.set_xlabel("offered rate (turns/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"knee ({knee['mode']}): highest rate with p99 <= {knee['p99_target_ms']:g} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_text(rep: dict) -> str:
    lat = rep["latency_ms"]
    lines = [
        f"mode {rep['mode']} target {rep['target_rate']:g}/s for {rep['duration_s']:g}s, "
        f"{rep['processes']} process(es): sent {rep['sent']} answered {rep['answered']} errors {rep['errors']}",
        f"throughput: sent {rep['throughput']['achieved_send_rate']:,.1f}/s, "
        f"answered {rep['throughput']['answered_per_s']:,.1f}/s",
        f"latency ms: p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} p99.9 {lat['p99.9']} max {lat['max']}",
    ]
    if rep.get("commit"):
        lines[0] += f", commit {rep['commit']}"
    if rep.get("p99_target_ms") is not None:
        lines.append(f"p99 target {rep['p99_target_ms']:g} ms: {'met' if rep.get('p99_target_met') else 'MISSED'}")
    if rep["errors_by_code"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in rep["errors_by_code"].items()))
    sb = rep.get("server_batches")
    if sb:
        lines.append(f"server batches: {sb['batches']} batches, mean {sb['mean']} turns, p50 <= {sb['p50_le']}, "
                     f"p99 <= {sb['p99_le']}")
    g = rep["generator"]
    if g["bottleneck"]:
        lines.append("WARNING: the load generator itself was the bottleneck: " + "; ".join(g["warnings"]))
    else:
        lines.append(f"generator kept up: send lag p99 {g['send_lag_p99_ms']} ms, "
                     f"client CPU {g['client_cpu_max_fraction']:.0%}")
    return "\n".join(lines)
