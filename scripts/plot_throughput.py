"""Renders images/throughput.png from bench-results/bench.json (written by `bench`).

Bars: the pipeline's rates beside the limits measured in the same run, so the gap
between them is what the picture shows.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src) as f:
        r = json.load(f)

    def rate(m):
        return m["count"] / max(m["seconds"], 1e-9)

    bars = [
        ("Consume limit\n(raw rdkafka, msg/s)", rate(r["raw_consume"]), "#9e9e9e"),
        ("PostgreSQL write limit\n(COPY + upsert, rows/s)", rate(r["pg_write"]), "#9e9e9e"),
        ("Consumer end to end\n(rows/s)", r["consumer"]["rows_per_s"], "#1f77b4"),
    ]
    if r.get("python"):
        bars.append(
            ("Plain Python consumer\n(rows/s, the baseline)", r["python"]["rows_per_s"], "#ff7f0e")
        )
    bars += [
        ("Raw producer loop\n(events/s)", rate(r["raw_produce"]), "#9e9e9e"),
        ("Producer\n(events/s)", r["producer"]["events_per_s"], "#1f77b4"),
    ]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    ax.barh(labels, values, color=[b[2] for b in bars])
    ax.invert_yaxis()
    top = max(values)
    for i, v in enumerate(values):
        ax.text(v + top * 0.01, i, f"{v:,.0f}", va="center", fontsize=9)
    ax.set_xlim(0, top * 1.18)
    ax.set_xlabel("per second (grey: limits measured in the same run; blue: the pipeline; orange: the baseline)")
    ax.set_title(
        f"Throughput, {r['events']:,} events, {r['date']}\n"
        f"{r['machine']}; {r['broker']}",
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
