"""The hnswlib and faiss side of `cargo bench --bench index`: the same vectors, parameters and queries, timed the same
way.

    python benches/hnswlib_compare.py DATA.npy QUERIES.npy TRUTH.npy --m 32 --ef-construction 200 \
        --threads 2 --ef 32 64 128 256 [--library hnswlib|faiss]

`--library faiss` measures faiss's `IndexHNSWFlat` (inner product) instead of hnswlib.

DATA and QUERIES hold L2-normalised float32 rows; TRUTH holds the exact 100 nearest rows of DATA per query.
Prints one JSON object: build seconds and, per ef, recall@10, recall@100, single-thread latency p50/p99 (one
query per call, as a service would ask) and mean (all queries in one call), and queries/s on `--threads` threads.
"""

import argparse
import json
import time

import numpy as np


class Hnswlib:
    """hnswlib's `Index` (inner product)."""

    def __init__(self, dim, m, ef_construction, n):
        import hnswlib

        self.version = getattr(hnswlib, "__version__", "0.8.0")
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, ef_construction=ef_construction, M=m, random_seed=100)

    def add(self, data, threads):
        self.index.add_items(data, np.arange(len(data)), num_threads=threads)

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def query(self, queries, k, threads):
        return self.index.knn_query(queries, k=k, num_threads=threads)[0]


class Faiss:
    """faiss's `IndexHNSWFlat` (inner product); its threads are OpenMP's."""

    def __init__(self, dim, m, ef_construction, n):
        import faiss

        self.faiss = faiss
        self.version = faiss.__version__
        self.index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction

    def add(self, data, threads):
        self.faiss.omp_set_num_threads(threads)
        self.index.add(data)

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def query(self, queries, k, threads):
        self.faiss.omp_set_num_threads(threads)
        return self.index.search(queries, k)[1]


def recall(found, truth, k):
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("queries")
    parser.add_argument("truth")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--library", choices=["hnswlib", "faiss"], default="hnswlib")
    args = parser.parse_args()

    data = np.load(args.data)
    queries = np.load(args.queries)
    truth = np.load(args.truth)
    n, dim = data.shape

    index = (Faiss if args.library == "faiss" else Hnswlib)(dim, args.m, args.ef_construction, n)
    started = time.perf_counter()
    index.add(data, args.threads)
    build = time.perf_counter() - started

    out = {"library": args.library, "version": index.version, "build_seconds": build, "points": n, "runs": []}
    for ef in args.ef:
        index.set_ef(max(ef, 10))
        latencies, found = [], []
        for q in queries:
            started = time.perf_counter()
            labels = index.query(q[None, :], 10, 1)
            latencies.append((time.perf_counter() - started) * 1000.0)
            found.append(labels[0])
        started = time.perf_counter()
        index.query(queries, 10, 1)
        mean = (time.perf_counter() - started) * 1000.0 / len(queries)
        started = time.perf_counter()
        index.query(queries, 10, args.threads)
        qps = len(queries) / (time.perf_counter() - started)
        index.set_ef(max(ef, 100))
        labels100 = index.query(queries, 100, args.threads)
        latencies.sort()
        out["runs"].append({
            "ef": ef,
            "recall10": recall(found, truth, 10),
            "recall100": recall(labels100, truth, 100),
            "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "mean_ms": mean,
            "qps": qps,
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
