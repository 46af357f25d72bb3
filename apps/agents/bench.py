"""`manage.py bench vectors`: pgvector HNSW search against an exact numpy ranking in the same run.

Seeded clustered vectors go into a scratch table (dropped at the end) by binary COPY; the
HNSW index is built with the same parameters as the Memory index; queries run the way
the search selector runs them (one transaction, SET LOCAL ef_search and iterative scan).
"""

import io
import os
import struct
import time

import numpy as np
from django.db import connection, transaction

from apps.agents.models import HNSW_EF_CONSTRUCTION, HNSW_M


def add_arguments(parser) -> None:
    parser.add_argument("--rows", type=int, default=100_000, help="vectors in the table (default 100000)")
    parser.add_argument("--dim", type=int, default=384, help="dimensions (default 384)")
    parser.add_argument("--clusters", type=int, default=10, help="clusters the vectors are drawn around (default 10)")
    parser.add_argument("--queries", type=int, default=200, help="query vectors, held out of the table (default 200)")
    parser.add_argument(
        "--ef", type=int, nargs="+", default=[40, 64, 100], help="hnsw.ef_search values to measure (default 40 64 100)"
    )
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument(
        "--index",
        choices=sorted(INDEXED_AS),
        default="halfvec",
        help="what the HNSW index holds: halfvec, as the Memory index does (default), or full-precision vector",
    )
    parser.add_argument("--seed", type=int, default=6, help="random seed (default 6)")
    parser.add_argument(
        "--maintenance-work-mem", default="1GB", help="for the index build; a graph that does not fit builds slowly"
    )


def synthetic_vectors(rows: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around `clusters` centres, each cluster varying mostly within a few directions.

    Text embeddings are like that (low intrinsic dimension, topics as clusters); isotropic
    noise in 384 dimensions would make every neighbour equally far and measure nothing useful.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    directions = rng.standard_normal((clusters, 48, dim)).astype(np.float32) * 0.3
    label = rng.integers(0, clusters, size=rows)
    latent = rng.standard_normal((rows, 48)).astype(np.float32)
    vectors = centres[label]
    for cluster in range(clusters):  # per cluster: a (rows, 48, dim) gather would need gigabytes
        members = label == cluster
        vectors[members] += latent[members] @ directions[cluster]
    vectors += rng.standard_normal((rows, dim)).astype(np.float32) * 0.3
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), label


def _copy_binary(cursor, table: str, vectors: np.ndarray, kinds: np.ndarray) -> None:
    """COPY ... FROM STDIN (FORMAT binary), the tuples laid out by numpy: seconds for 100k x 384."""
    rows, dim = vectors.shape
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i4"),
            ("kind_len", ">i4"),
            ("kind", ">i2"),
            ("vec_len", ">i4"),
            ("vec_dim", ">i2"),
            ("vec_unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    tuples = np.empty(rows, dtype=layout)
    tuples["fields"] = 3
    tuples["id_len"], tuples["id"] = 4, np.arange(rows)
    tuples["kind_len"], tuples["kind"] = 2, kinds
    tuples["vec_len"], tuples["vec_dim"], tuples["vec_unused"] = 4 + 4 * dim, dim, 0
    tuples["vec"] = vectors
    payload = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0) + tuples.tobytes() + struct.pack(">h", -1)
    cursor.copy_expert(f"COPY {table} (id, kind, embedding) FROM STDIN WITH (FORMAT binary)", io.BytesIO(payload))


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[set[int]]:
    """The true k nearest by cosine distance (unit vectors: largest dot product)."""
    scores = queries @ vectors.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


# What the index is built on and the ORDER BY that uses it, per --index.
INDEXED_AS = {
    "halfvec": ("(embedding::halfvec({dim})) halfvec_cosine_ops", "embedding::halfvec({dim}) <=> %s::halfvec"),
    "vector": ("embedding vector_cosine_ops", "embedding <=> %s::vector"),
}


def _search(
    table: str, literals: list[str], k: int, ef: int, iterative: bool, where: str = "", order: str = ""
) -> tuple[list, list]:
    found, latencies = [], []
    for literal in literals:
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true)",
                [str(ef), "relaxed_order" if iterative else "off"],
            )
            cursor.execute(
                f"SELECT id FROM {table} {where} ORDER BY {order} LIMIT %s",  # noqa: S608 - our table and expression
                [literal, k],
            )
            ids = {row[0] for row in cursor.fetchall()}
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids)
    return found, latencies


def _recall(found: list[set[int]], truth: list[set[int]], k: int) -> float:
    return float(np.mean([len(f & t) / k for f, t in zip(found, truth, strict=True)]))


def run(stdout, *, rows, dim, clusters, queries, ef, k, seed, maintenance_work_mem, index="halfvec", **_) -> dict:
    write = stdout.write
    table = f"bench_vectors_{os.getpid()}"
    vectors, _ = synthetic_vectors(rows + queries, dim, clusters, seed)
    vectors, query_vectors = vectors[:rows], vectors[rows:]
    kinds = np.random.default_rng(seed + 1).integers(0, 10, size=rows).astype(np.int16)
    literals = [_literal(q) for q in query_vectors]
    write(f"vectors: {rows} x {dim}, {clusters} clusters, {queries} held-out queries, k={k}, seed={seed}")
    element, order = (part.format(dim=dim) for part in INDEXED_AS[index])
    write(f"index: hnsw on {element} m={HNSW_M} ef_construction={HNSW_EF_CONSTRUCTION} (the Memory index: halfvec)")

    truth = exact_top_k(vectors, query_vectors, k)
    # The baseline answers one query at a time, as a search endpoint would.
    single = []
    for query in query_vectors[: min(50, queries)]:
        started = time.perf_counter()
        exact_top_k(vectors, query[None, :], k)
        single.append((time.perf_counter() - started) * 1000)
    numpy_ms = float(np.median(single))
    write(f"exact numpy (brute force, one query at a time): p50={numpy_ms:.2f} ms")

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE UNLOGGED TABLE {table} (id integer PRIMARY KEY, kind smallint, embedding vector({dim}))"
        )
    try:
        with connection.cursor() as cursor:
            started = time.perf_counter()
            _copy_binary(cursor, table, vectors, kinds)
            write(f"load (binary COPY): {time.perf_counter() - started:.1f} s")
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
            started = time.perf_counter()
            cursor.execute(
                f"CREATE INDEX {table}_hnsw ON {table} USING hnsw ({element}) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
            )
            build_s = time.perf_counter() - started
            cursor.execute(f"ANALYZE {table}")
        write(f"index build: {build_s:.1f} s (maintenance_work_mem={maintenance_work_mem})")

        _search(table, literals[: min(20, queries)], k, max(ef), True, order=order)  # warm the index pages
        measured = {}
        for value in ef:
            found, latencies = _search(table, literals, k, value, True, order=order)
            recall = _recall(found, truth, k)
            p50, p99 = np.percentile(latencies, [50, 99])
            measured[value] = (recall, p50, p99)
            write(
                f"ef_search={value:<4} recall@{k}={recall:.3f} p50={p50:.2f} ms p99={p99:.2f} ms "
                f"(exact numpy / pgvector p50: {numpy_ms / p50:.1f})"
            )

        # A filter keeping 10% of rows: without iterative scans the index hands back ef_search
        # candidates and the filter leaves ~10% of them; with them the scan goes on.
        mask = kinds == 3
        filtered_truth = exact_top_k(vectors, query_vectors, k, mask)
        for iterative in (False, True):
            found, latencies = _search(table, literals, k, ef[0], iterative, where="WHERE kind = 3", order=order)
            write(
                f"filter kind=3 (10% of rows), ef_search={ef[0]}, iterative_scan="
                f"{'relaxed_order' if iterative else 'off':13} recall@{k}={_recall(found, filtered_truth, k):.3f} "
                f"p50={np.percentile(latencies, 50):.2f} ms"
            )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")

    chosen = next((value for value in sorted(ef) if measured[value][0] >= 0.95), max(ef))
    recall, p50, p99 = measured[chosen]
    summary = {
        "recall_at_10": round(recall, 3),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "build_s": round(build_s, 1),
        "ef_search": chosen,
        "rows": rows,
        "index": index,
    }
    write(" ".join(f"{key}={value}" for key, value in summary.items()))
    return summary
