"""Memory and tick cost of a plant whose PLCs are polled every second, over a full day of history.

    .venv/bin/python benchmarks/polled_plant.py                      # 100 machines, 25 h (~30 s, ~1 GiB)
    .venv/bin/python benchmarks/polled_plant.py --machines 1000      # ~5 min, ~8 GiB

Every machine sends state, total and reject once a second (as a Modbus poll or an OPC UA subscription with
a 1 s sampling interval does): the state changes every ~15 min, a part is counted in 70 % of the running
seconds and 2 % of them are rejects. The day is fed to one engine in chunks of --chunk seconds, then:

- memory: what the engine holds (sample log, state table, counter table; allocated) against the baseline of
  the same samples as plain columns (machine int32, signal int8, time and value float64, quality int8: 22 B
  per sample), and the peak resident size of the process (it includes Python, NumPy and the transients);
- ticks, each with every window of every machine advanced (timeline + windows + aggregate):
  - steady: 1 s of new samples for every machine;
  - after a steady second, a state sample of one machine from the second before, older than its state
    already derived: the machine is derived again from its log (`rederived_machines` + 1);
  - a state sample newer than the machine's state but older than its counts (two connectors with different
    delays): derived as it comes, no machine derived again.
  The ratio column compares each with the steady tick.

Peak resident size comes from getrusage (ru_maxrss): run one size per process for a clean figure.
"""

from __future__ import annotations

# ruff: noqa: E402  (thread pins must be set before NumPy is imported)
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from engine import NOW, make_plant  # benchmarks/engine.py: the same synthetic plant

from oee_stream.engine.core import Engine
from oee_stream.engine.plant import REJECT, STATE, TOTAL

RAW_BYTES = 4 + 1 + 8 + 8 + 1  # one sample as plain columns


class Polled:
    """The plant's signals, one second at a time (state, total, reject for every machine)."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.offset = self.rng.random(n) * 0.5  # each PLC polled at its own phase of the second
        self.state = np.ones(n)
        self.total = np.zeros(n)
        self.reject = np.zeros(n)

    def seconds(self, t0: float, k: int) -> tuple[np.ndarray, ...]:
        n, rng = self.n, self.rng
        flip = rng.random((k, n)) < 1 / 900
        state = np.where((np.cumsum(flip, axis=0) + (self.state[None, :] == 0)) % 2 == 1, 0.0, 1.0)
        part = (rng.random((k, n)) < 0.7) & (state == 1)
        total = self.total + np.cumsum(part, axis=0)
        reject = self.reject + np.cumsum(part & (rng.random((k, n)) < 0.02), axis=0)
        self.state, self.total, self.reject = state[-1], total[-1], reject[-1]
        m = np.tile(np.repeat(np.arange(n), 3), k)
        s = np.tile(np.array([STATE, TOTAL, REJECT], np.int8), n * k)
        t = np.repeat(t0 + np.arange(k, dtype=np.float64), 3 * n) + np.tile(np.repeat(self.offset, 3), k)
        v = np.stack([state, total, reject], axis=2).reshape(-1)
        return m, s, t, v, np.zeros(len(m), np.int8)


def rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tick(e: Engine, now: float, m: np.ndarray, s: np.ndarray, t: np.ndarray, v: np.ndarray) -> float:
    t0 = time.perf_counter()
    e.ingest_arrays(m, s, t, v, np.zeros(len(m), np.int8), now=now)
    e.aggregate(e.timeline(now), e.windows(now))
    return time.perf_counter() - t0


def run(n_machines: int, hours: float, chunk: int, repeat: int) -> None:
    plant = make_plant(n_machines)
    e = Engine(plant)
    src = Polled(n_machines)
    sec = int(hours * 3600)
    start = NOW - sec
    fed = 0
    t_feed = time.perf_counter()
    next_report = time.perf_counter() + 10
    for c0 in range(0, sec, chunk):
        k = min(chunk, sec - c0)
        m, s, t, v, q = src.seconds(start + c0, k)
        now = start + c0 + k
        e.ingest_arrays(m, s, t, v, q, now=now)
        e.timeline(now)
        fed += len(m)
        if time.perf_counter() > next_report:  # progress on long runs
            print(f"  ... {c0 / 3600:.1f} h of {hours:g} h fed", file=sys.stderr, flush=True)
            next_report = time.perf_counter() + 10
    t_feed = time.perf_counter() - t_feed
    now = start + sec
    e.aggregate(e.timeline(now), e.windows(now))

    log = e._log
    log_b = sum(getattr(log, k).nbytes for k in ("m", "s", "t", "v", "q", "rep"))

    def table_b(a: object) -> int:
        return int(a.key.nbytes + a.t.nbytes + sum(c.nbytes for c in a.cols.values()))  # type: ignore[attr-defined]

    held = e.memory_bytes()
    print(f"== {n_machines} machines polled at 1 Hz for {hours:g} h: {fed / 1e6:.1f} M samples fed in "
          f"{t_feed:.1f} s ({fed / t_feed / 1e6:.2f} M/s in chunks of {chunk} s)")
    print(f"{'memory':58s}{'MiB':>9s}{'B/sample':>10s}")
    rows = [("sample log (" + f"{log.n / 1e6:.2f} M entries; repeats leave it)", log_b),
            (f"state table ({int(e._sa.len.sum()) / 1e6:.2f} M rows)", table_b(e._sa)),
            (f"counter table ({int(e._ca.len.sum()) / 1e6:.2f} M rows)", table_b(e._ca)),
            ("engine, all held", held),
            ("baseline: the samples as plain columns (22 B each)", fed * RAW_BYTES)]
    for label, b in rows:
        print(f"  {label:56s}{b / 2**20:9.0f}{b / fed:10.1f}")
    print(f"  {'engine held / baseline':56s}{held / (fed * RAW_BYTES):9.2f}x")
    print(f"  {'peak resident size of the process (ru_maxrss)':56s}{rss_peak_mib():9.0f}")

    # --- ticks: every window of every machine advanced each time
    def best(fn: object) -> float:
        return min(fn() for _ in range(repeat))  # type: ignore[operator]

    clock = [now]

    def steady() -> float:
        clock[0] += 1.0
        m, s, t, v, _q = src.seconds(clock[0] - 1.0, 1)
        return tick(e, clock[0], m, s, t, v)

    steady()
    t_steady = best(steady)
    before = e.stats.rederived_machines
    k = [0]

    def late() -> float:  # after a steady second, one machine's state sample from the second before
        steady()
        clock[0] += 1.0
        i = k[0] % n_machines
        k[0] += 1
        return tick(e, clock[0], np.array([i]), np.array([STATE], np.int8), np.array([clock[0] - 2.75]),
                    np.array([0.0]))

    t_late = best(late)
    rederived = e.stats.rederived_machines - before

    def behind() -> float:  # counts first, the state a moment later but older than those counts
        clock[0] += 1.0
        i = k[0] % n_machines
        k[0] += 1
        tick(e, clock[0], np.array([i]), np.array([TOTAL], np.int8), np.array([clock[0] - 0.2]),
             np.array([src.total[i] + 1.0]))
        clock[0] += 1.0
        return tick(e, clock[0], np.array([i]), np.array([STATE], np.int8), np.array([clock[0] - 1.5]),
                    np.array([1.0]))

    before = e.stats.rederived_machines
    t_behind = best(behind)
    behind_rederived = e.stats.rederived_machines - before
    print(f"{'tick (every window of every machine advanced)':58s}{'ms':>9s}{'vs steady':>10s}")
    for label, sec_ in ((f"steady: +{3 * n_machines} samples (1 s of the plant)", t_steady),
                        (f"a late state sample: {rederived} machine(s) derived again in {repeat} ticks", t_late),
                        (f"state behind the counts: {behind_rederived} derived again", t_behind)):
        print(f"  {label:56s}{sec_ * 1e3:9.1f}{sec_ / t_steady:9.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--machines", type=int, nargs="*", default=[100])
    ap.add_argument("--hours", type=float, default=25.0, help="history fed before the ticks are timed")
    ap.add_argument("--chunk", type=int, default=600, help="seconds of the plant per ingest while feeding")
    ap.add_argument("--repeat", type=int, default=5, help="ticks of each kind; the best is shown")
    args = ap.parse_args()
    print(f"oee-stream polled-plant benchmark: numpy {np.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cpus")
    for n in args.machines:
        run(n, args.hours, args.chunk, args.repeat)


if __name__ == "__main__":
    main()
