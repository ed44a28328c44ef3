"""Reads run.sh's timelines: for each injected stall, how long a span of arrivals waited, and
how fast the backlog was worked off.

For each window where a stall was injected (1.4-1.8 s, 2.4-2.8 s, 3.4-3.8 s of the recorded
window), the episode is the run of milliseconds from the first whose slowest request waited
over 2 ms to the first after the peak whose mean is back under 500 us. Per episode:
  delayed   milliseconds of arrivals in it (mean latency over 500 us);
  peak      the highest mean latency of a millisecond, us;
  drain     arrivals' span from the peak to the episode's end divided by the real time that span
            took to be answered: how many times the arrival rate the backlog was served at.
Prints one line per system and rate: medians over episodes, and the count.
usage: drain.py DIR
"""
import csv, glob, gzip, os, re, statistics as st, sys

WINDOWS = [(1400, 1800), (2400, 2800), (3400, 3800)]

def episodes(rows):
    out = []
    for a, b in WINDOWS:
        w = [r for r in rows if a <= r[0] < b]
        start = next((i for i, r in enumerate(w) if r[3] > 2000), None)
        if start is None:
            continue
        peak = max(range(start, min(start + 40, len(w))), key=lambda i: w[i][2])
        end = next((i for i in range(peak, len(w)) if w[i][2] < 500), None)
        if end is None or end == peak:
            continue
        tp, lp = w[peak][0], w[peak][2] / 1e3
        te, le = w[end - 1][0], w[end - 1][2] / 1e3
        took = (te + le) - (tp + lp)
        drain = (te - tp) / took if took > 0 else float('inf')
        out.append((end - start, w[peak][2], drain))
    return out

d = sys.argv[1]
by = {}
for f in sorted(glob.glob(os.path.join(d, '*.csv')) + glob.glob(os.path.join(d, '*.csv.gz'))):
    sysname, rate, _ = re.match(r'(\w+)-(\d+)-r(\d+)\.csv', os.path.basename(f)).groups()
    opener = gzip.open if f.endswith('.gz') else open
    rows = [(int(r['ms']), int(r['requests']), float(r['mean_us']), float(r['max_us']))
            for r in csv.DictReader(opener(f, 'rt'))]
    by.setdefault((int(rate), sysname), []).extend(episodes(rows))
print('| arrivals/s | system | episodes | delayed ms (median, min-max) | peak mean µs (median) | drain × arrival rate (median, min-max) |')
print('|---|---|---|---|---|---|')
for (rate, s), eps in sorted(by.items()):
    if not eps:
        print(f'| {rate} | {s} | 0 | | | |')
        continue
    dl = [e[0] for e in eps]; pk = [e[1] for e in eps]; dr = [e[2] for e in eps]
    fmt = lambda x: 'inf' if x == float('inf') else f'{x:.1f}'
    print(f'| {rate} | {s} | {len(eps)} | {st.median(dl):.0f} ({min(dl)}-{max(dl)}) | {st.median(pk):.0f} | '
          f'{fmt(st.median(dr))} ({fmt(min(dr))}-{fmt(max(dr))}) |')
