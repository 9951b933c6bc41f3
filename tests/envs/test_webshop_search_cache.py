"""The saved, memory-mapped WebShop search index answers exactly like the in-memory one, and is built once."""

import multiprocessing
import os

from prism_lit.envs.webshop.generator import generate_catalogue
from prism_lit.envs.webshop.search import ProductSearch


def _products(n=300, seed=3):
    from prism_lit.envs.webshop.data import build_data

    files = generate_catalogue(n, None, seed)
    return build_data(files["products"], files["attributes"], files["human"], human=True, seed=seed,
                      source="test").products


QUERIES = ["red cotton shirt", "organic tea", "wireless headphones under", "nothing-matches-this", "the and of"]


def test_cached_index_answers_like_the_in_memory_one_and_is_reused(tmp_path):
    products = _products()
    memory = ProductSearch(products)
    first = ProductSearch.cached(products, cache_dir=tmp_path)
    (built,) = [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    stamp = (built / "done.json").stat().st_mtime_ns
    second = ProductSearch.cached(products, cache_dir=tmp_path)
    assert (built / "done.json").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    for q in QUERIES:
        assert first.search(q) == memory.search(q) == second.search(q), q
    # another catalogue gets its own index
    ProductSearch.cached(products[:-1], cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]) == 2


def _build_in_child(cache_dir, queue):
    queue.put((os.getpid(), ProductSearch.cached(_products(), cache_dir=cache_dir).search("organic tea")))


def test_concurrent_processes_build_the_index_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    assert results[0][1] == results[1][1]
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.lock"))
    assert len(list(tmp_path.iterdir())) == 1  # one index, no temporary directory left
