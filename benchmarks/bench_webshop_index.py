"""Benchmark the WebShop search index at upstream's full size: build, save, load (memory-mapped), memory, queries.

Builds a corpus of ``--products`` products (upstream's full file: 1,181,436): the project's generator makes
``--base-products`` of them (it is too slow for a million), and the rest are copies of those whose title words are
shuffled and which carry a model token of their own (so the vocabulary and the postings grow as in a real large
catalogue). Then it measures, each in a fresh process so that memory figures are that step's own:

- ``build``: indexing in memory (what every process paid before the index was cached), peak RSS;
- ``build+save``: ``ProductSearch.cached`` on an empty cache (index, save, publish);
- ``load``: ``ProductSearch.cached`` on the filled cache (memory-mapped), its time and RSS after loading;
- query latency (median and p95 over ``--queries`` goal instructions) on the loaded index.

    python benchmarks/bench_webshop_index.py --products 1181436 --queries 500
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _catalogue(n: int, base: int, seed: int):
    """(products, goal instructions): ``base`` generated products tiled up to ``n``."""
    import random

    from prism_lit.envs.webshop.data import build_data
    from prism_lit.envs.webshop.generator import generate_catalogue

    files = generate_catalogue(min(n, base), None, seed)
    data = build_data(files["products"], files["attributes"], files["human"], human=True, seed=seed,
                      source="bench")
    rng = random.Random(seed)
    products = list(data.products)
    while len(products) < n:
        source = data.products[len(products) % len(data.products)]
        words = source["Title"].split()
        rng.shuffle(words)
        products.append({**source, "Title": " ".join(words) + f" m{len(products):07d}"})
    return products, [g["instruction_text"] for g in data.goals]


def _step(kind: str, n: int, base: int, seed: int, cache_dir: str, n_queries: int, out) -> None:
    from prism_lit.envs.webshop.search import ProductSearch, instruction_keywords

    start = time.perf_counter()
    products, instructions = _catalogue(n, base, seed)
    result = {"catalogue_s": time.perf_counter() - start, "rss_catalogue_mb": _rss_mb()}
    start = time.perf_counter()
    if kind == "build":
        engine = ProductSearch(products)
    else:
        engine = ProductSearch.cached(products, cache_dir=cache_dir)
    result[f"{kind}_s"] = time.perf_counter() - start
    result["rss_after_mb"] = _rss_mb()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "load":
        queries = [instruction_keywords(text) for text in instructions[:n_queries]]
        times = []
        for q in queries:
            t = time.perf_counter()
            engine.search(q)
            times.append(time.perf_counter() - t)
        times.sort()
        result["query_ms_median"] = 1000 * statistics.median(times)
        result["query_ms_p95"] = 1000 * times[int(0.95 * (len(times) - 1))]
    out.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_181_436)
    parser.add_argument("--base-products", type=int, default=5000, help="products made by the generator")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-build", action="store_true", help="skip the in-memory build step")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    report = {"products": args.products, "base_products": args.base_products,
              "machine": platform.processor() or platform.machine()}
    with tempfile.TemporaryDirectory() as cache_dir:
        for kind in ([] if args.skip_build else ["build"]) + ["build+save", "load"]:
            queue = ctx.Queue()
            proc = ctx.Process(target=_step, args=(kind, args.products, args.base_products, args.seed, cache_dir,
                                                       args.queries, queue))
            proc.start()
            report[kind] = queue.get()
            proc.join()
            print(json.dumps({kind: report[kind]}), flush=True)
        report["index_mb_on_disk"] = sum(p.stat().st_size for p in Path(cache_dir).rglob("*")
                                         if p.is_file()) / 2**20
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
