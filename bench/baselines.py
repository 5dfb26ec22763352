"""Baselines measured from Python itself: concurrent.futures executors.

Usage: python baselines.py latency KIND N
       python baselines.py cpu KIND WORKERS WORK
KIND is "interpreter" (InterpreterPoolExecutor, 3.14+) or "process".
Prints one JSON object.
"""
import concurrent.futures as cf
import json
import sys
import time


def noop(x):
    return x


def burn(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def executor(kind, workers):
    if kind == "interpreter":
        return cf.InterpreterPoolExecutor(max_workers=workers)
    return cf.ProcessPoolExecutor(max_workers=workers)


def latency(kind, n):
    noop = sys.modules["baselines"].noop
    with executor(kind, 1) as ex:
        for _ in range(50):  # warm up
            ex.submit(noop, {"id": 7}).result()
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            s = time.perf_counter_ns()
            ex.submit(noop, {"id": 7}).result()
            lat.append(time.perf_counter_ns() - s)
        total = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    return {"ops_per_s": n / total, "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99), "p999_ns": q(0.999)}


def cpu(kind, workers, work):
    burn = sys.modules["baselines"].burn
    with executor(kind, workers) as ex:
        list(ex.map(burn, [1000] * workers))  # start every worker
        t0 = time.perf_counter()
        ex.submit(burn, work).result()
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(ex.map(burn, [work] * workers, chunksize=1))
        many = time.perf_counter() - t0
    return {"one_s": one, "many_s": many, "speedup": workers * one / many}


if __name__ == "__main__":
    # Submit the functions of this file imported as a module (the harness
    # puts its directory on PYTHONPATH), so workers in other interpreters
    # and processes can import them.
    import baselines  # noqa: F401  (registers the importable copy)
    mode, kind = sys.argv[1], sys.argv[2]
    if mode == "latency":
        out = latency(kind, int(sys.argv[3]))
    else:
        out = cpu(kind, int(sys.argv[3]), int(sys.argv[4]))
    print(json.dumps(out))
