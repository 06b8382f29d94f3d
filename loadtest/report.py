"""Reports: the summary of a run (from its merged HDR histograms), a JSON file, a PNG plot,
the service's batch sizes scraped from its Prometheus /metrics, and the knee search.

The summary always satisfies ``sent == answered + errors`` (``check_counts`` asserts it).
"""
from __future__ import annotations

import json
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


# ---- summary ---------------------------------------------------------------------------------
def summarize(raw: dict, metrics_before: dict | None = None, metrics_after: dict | None = None) -> dict:
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
        "latency_ms": latency_summary(raw["hist"]),
        "latency_measured_from": "intended send time (open loop, no coordinated omission)",
        "generator": {"bottleneck": raw["generator_bottleneck"], "warnings": raw["generator_warnings"],
                      "send_lag_p99_ms": round(raw["lag_p99_ms"], 3), "send_lag_max_ms": round(raw["lag_max_ms"], 3),
                      "client_cpu_max_fraction": round(raw["client_cpu_max_fraction"], 3)},
        "client_batches_sent": raw.get("batches_sent"),
        "server_batches": batch_sizes(metrics_before, metrics_after),
        "per_second": per_second,
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


def plot_run(rep: dict, path) -> Path:
    """Latency percentiles (log scale) and throughput, per second."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ps = rep["per_second"]
    xs = [p["second"] for p in ps]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", "-."), ("max_ms", ":")):
        pts = [(x, p[key]) for x, p in zip(xs, ps) if p[key] is not None]
        if pts:
            ax1.plot([a for a, _ in pts], [b for _, b in pts], style, marker=".", label=key[:-3])
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms, from intended send)")
    lat = rep["latency_ms"]
    ax1.set_title(f"yujing loadtest {rep['mode']} @ {rep['target_rate']:g}/s: p50 {lat['p50']} ms, "
                  f"p99 {lat['p99']} ms, p99.9 {lat['p99.9']} ms, max {lat['max']} ms")
    ax1.grid(True, which="both", alpha=0.3)
    if ax1.get_lines():
        ax1.legend(loc="upper left")
    else:
        ax1.text(0.5, 0.5, "no answers", transform=ax1.transAxes, ha="center", color="red")
    ax2.plot(xs, [p["sent"] for p in ps], "-", marker=".", label="sent/s")
    ax2.plot(xs, [p["answered"] for p in ps], "-", marker=".", label="answered/s")
    ax2.plot(xs, [p["errors"] for p in ps], "-", marker=".", label="errors/s", color="red")
    ax2.set_xlabel("second of the run")
    ax2.set_ylabel("turns per second")
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left")
    if rep["generator"]["bottleneck"]:
        fig.text(0.01, 0.005, "generator bottleneck: " + "; ".join(rep["generator"]["warnings"]),
                 color="red", fontsize=8)
    fig.tight_layout()
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
