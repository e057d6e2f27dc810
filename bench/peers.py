#!/usr/bin/env python3
"""The Python peers of worker-facade on the benchmark's tiny tasks.

Runs, with the standard library only and one worker process each:

* a multiprocessing queue consumer like the seed (shared/seeds/facade-blog.txt):
  tasks go in on one Queue, a None terminator ends the worker, results come
  back on another Queue;
* concurrent.futures.ProcessPoolExecutor(max_workers=1).map without chunking
  (chunksize=1) and with chunksize=1000.

Each prints its streaming rate (tasks/s: submit N, collect every result) and
the p50 of one task's round trip (submit one, wait for its result), medians
of 3 runs. The task is the benchmark's tiny task, (id, 16 payload bytes),
with a small integer result.

    python3 bench/peers.py            # a table
    python3 bench/peers.py --machine  # tab-separated lines, for the report
    python3 bench/peers.py --quick    # a tenth of the work
"""

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

PAYLOAD = bytes([7] * 16)
RUNS = 3


def solve(task):
    """The tiny task's work, as in the Rust worker."""
    task_id, payload = task
    return (task_id * 3) ^ payload[15]


def tasks(n):
    return [(i, PAYLOAD) for i in range(n)]


def percentile(samples, p):
    samples = sorted(samples)
    rank = max(1, min(len(samples), -(-len(samples) * p // 100)))
    return samples[int(rank) - 1]


# --- the seed's queue consumer -------------------------------------------


def process_queue(input_queue, output_queue):
    task = input_queue.get()
    while task is not None:
        output_queue.put((task[0], solve(task)))
        task = input_queue.get()


class QueueConsumer:
    """The seed's WorkingProcessFacade, minus the console: one process
    reading tasks from a queue until the None terminator."""

    def __init__(self):
        self.input = mp.Queue()
        self.output = mp.Queue()
        self.proc = mp.Process(target=process_queue, args=(self.input, self.output))
        self.proc.start()

    def process_task(self, task):
        self.input.put(task)

    def collect_tasks(self, n):
        results = [self.output.get() for _ in range(n)]
        self.input.put(None)
        self.proc.join()
        return results


def queue_stream(n):
    w = QueueConsumer()
    ts = tasks(n)
    t0 = time.perf_counter()
    for t in ts:
        w.process_task(t)
    results = w.collect_tasks(n)
    took = time.perf_counter() - t0
    assert len(results) == n
    return n / took


def queue_round_trip(samples):
    w = QueueConsumer()
    out = []
    for i in range(samples + samples // 10):
        t0 = time.perf_counter()
        w.process_task((i, PAYLOAD))
        w.output.get()
        if i >= samples // 10:
            out.append(time.perf_counter() - t0)
    w.collect_tasks(0)
    return percentile(out, 50)


# --- ProcessPoolExecutor ---------------------------------------------------


def pool_stream(n, chunksize):
    with ProcessPoolExecutor(max_workers=1) as ex:
        ex.submit(solve, (0, PAYLOAD)).result()  # the worker is up
        ts = tasks(n)
        t0 = time.perf_counter()
        results = list(ex.map(solve, ts, chunksize=chunksize))
        took = time.perf_counter() - t0
    assert len(results) == n
    return n / took


def pool_round_trip(samples):
    with ProcessPoolExecutor(max_workers=1) as ex:
        out = []
        for i in range(samples + samples // 10):
            t0 = time.perf_counter()
            ex.submit(solve, (i, PAYLOAD)).result()
            if i >= samples // 10:
                out.append(time.perf_counter() - t0)
    return percentile(out, 50)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machine", action="store_true", help="tab-separated output")
    ap.add_argument("--quick", action="store_true", help="a tenth of the work")
    ap.add_argument(
        "--pool-stream",
        type=int,
        metavar="N",
        help="only one run of ProcessPoolExecutor.map(chunksize=1000) on N tasks "
        "(the report interleaves it with the library's own run)",
    )
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    if args.pool_stream:
        rate = pool_stream(args.pool_stream, 1000)
        print(f"peer\tProcessPoolExecutor.map, chunksize=1000\t{rate:.0f}\tnan")
        return

    def med(f, *a):
        return statistics.median(f(*a) for _ in range(RUNS))

    rt_samples = 2000 // scale
    rows = []
    rt = med(queue_round_trip, rt_samples)
    rows.append(("multiprocessing queue consumer (the seed)", med(queue_stream, 100_000 // scale), rt))
    pool_rt = med(pool_round_trip, rt_samples)
    rows.append(("ProcessPoolExecutor.map, chunksize=1", med(pool_stream, 20_000 // scale, 1), pool_rt))
    rows.append(
        ("ProcessPoolExecutor.map, chunksize=1000", med(pool_stream, 200_000 // scale, 1000), pool_rt)
    )

    if args.machine:
        for name, rate, p50 in rows:
            print(f"peer\t{name}\t{rate:.0f}\t{p50 * 1e6:.1f}")
        return
    print(f"Python {sys.version.split()[0]}, one worker process, medians of {RUNS}")
    print(f"{'peer':45} {'tasks/s':>12} {'p50 round trip':>16}")
    for name, rate, p50 in rows:
        print(f"{name:45} {rate:12,.0f} {p50 * 1e6:13.1f} µs")


if __name__ == "__main__":
    main()
