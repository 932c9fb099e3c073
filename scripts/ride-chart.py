#!/usr/bin/env python3
"""ride-chart.py - draws a ridesim run (its --csv time series) as a PNG: the dispatcher queue's depth, the trips
accepted per second, and the latencies, over time, with the burst shaded, so a reader sees the peak being shaved.

    python3 scripts/ride-chart.py run.csv docs/images/ride-burst.png     # needs matplotlib (pip install matplotlib)
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def number(text):
    return float(text) if text not in ("", "-") else float("nan")


def main(source, target):
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    t = [int(r["second"]) for r in rows]
    figure, (depth, rate, latency) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    burst = [int(r["second"]) for r in rows if r["phase"] == "burst"]
    for axis in (depth, rate, latency):
        if burst:
            axis.axvspan(min(burst), max(burst) + 1, color="orange", alpha=0.15, label="burst")
        axis.grid(True, alpha=0.3)
    depth.plot(t, [number(r["queue_depth"]) for r in rows], label="dispatcher.trips (ready + unacked)", color="tab:blue")
    depth.plot(t, [number(r["retry_depth"]) for r in rows], label="dispatcher.retry", color="tab:gray", linestyle="--")
    depth.set_ylabel("messages")
    depth.set_title("The broker absorbs the burst: queue depth rises, then drains at the dispatchers' pace")
    depth.legend(loc="upper right")
    rate.plot(t, [number(r["accepted"]) for r in rows], label="trips accepted (201) per second", color="tab:green")
    rate.plot(t, [number(r["notified"]) for r in rows], label="passengers notified per second", color="tab:purple")
    rate.set_ylabel("per second")
    rate.legend(loc="upper right")
    latency.plot(t, [number(r["post_p50_ms"]) for r in rows], label="POST /v1/trips p50", color="tab:green")
    latency.plot(t, [number(r["post_p99_ms"]) for r in rows], label="POST /v1/trips p99", color="tab:green", linestyle="--")
    latency.plot(t, [number(r["notify_p50_ms"]) for r in rows], label="request to notification p50", color="tab:purple")
    latency.plot(t, [number(r["notify_p99_ms"]) for r in rows], label="request to notification p99", color="tab:purple",
                 linestyle="--")
    latency.set_yscale("log")
    latency.set_ylabel("ms (log scale)")
    latency.set_xlabel("seconds since the load started")
    latency.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"ride-chart: wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: ride-chart.py RUN.csv OUT.png")
    main(sys.argv[1], sys.argv[2])
