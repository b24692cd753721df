"""Plots the soak's memory samples (scripts/soak.sh) and says whether memory stayed flat.

Usage: python3 scripts/plot_rss.py rss.csv rss.png
Memory is flat when, for every long-running container, the mean RSS of the last fifth
of the run is within 10 % (or 8 MiB) of the mean of the second fifth (after warm-up).
Errors: requests failed in the first and the last halves of the run.
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    series = defaultdict(list)
    failed = {}
    with open(src) as f:
        for row in csv.DictReader(f):
            t = int(row["seconds"])
            # Pods keep their name prefix across restarts; serve pods are per model.
            name = row["pod"].rsplit("-", 2)[0] if row["pod"].count("-") >= 2 else row["pod"]
            series[f'{name}/{row["container"]}'].append((t, int(row["rss_kib"]) / 1024))
            failed[t] = int(row["requests_failed"]), int(row["requests_ok"])
    if not series:
        sys.exit("no samples")
    end = max(failed)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 1])
    verdicts = []
    for key, pts in sorted(series.items()):
        if pts[-1][0] - pts[0][0] < end * 0.8:
            continue  # short-lived: Jobs
        xs = [p[0] / 60 for p in pts]
        ys = [p[1] for p in pts]
        ax.plot(xs, ys, label=key)
        n = len(ys)
        early = ys[n // 5 : 2 * n // 5] or ys
        late = ys[4 * n // 5 :] or ys
        a, b = sum(early) / len(early), sum(late) / len(late)
        flat = b - a <= max(0.10 * a, 8.0)
        verdicts.append(flat)
        print(f"{key:40s} warm {a:8.1f} MiB  end {b:8.1f} MiB  {'flat' if flat else 'GROWING'}")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("lode fleet soak: resident memory per container")
    ax.legend(fontsize=7, ncol=2)
    ts = sorted(failed)
    ax2.plot([t / 60 for t in ts], [failed[t][0] for t in ts], color="red", label="requests failed")
    ax2.set_ylabel("failed (cumulative)")
    ax2.set_xlabel("minutes")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    half = [t for t in ts if t <= end / 2]
    f_first = failed[half[-1]][0] if half else 0
    f_total, ok_total = failed[end]
    print(f"requests: {ok_total} ok, {f_total} failed ({f_first} in the first half, {f_total - f_first} in the second)")
    print("memory:", "flat" if all(verdicts) else "GROWING", f"({len(verdicts)} containers)")
    print(f"plot: {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
