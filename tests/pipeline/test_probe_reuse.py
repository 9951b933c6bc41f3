"""Probe once, route many ways: ``probe.scores_from`` routes an earlier pass's records only when that pass measured
this run's model and corpus, and ``compare`` shares one pass between the routers that read it."""

import json
import shutil
from dataclasses import replace

import pytest
from test_pipeline import _compare_configs, _settings

from prism_lit.pipeline.report import build_report
from prism_lit.pipeline.run import pipeline, read_stage_marker


def _router(score):
    return {"class_path": "prism_lit.probe.routers.PrismRouter", "init_args": {"score": score}}


def _linked_run(tmp_path, name, source, copy_base=False):
    """A run dir with the source run's corpus linked and its base model linked (or copied)."""
    run = tmp_path / name
    run.mkdir()
    (run / "tasks").symlink_to(source / "tasks")
    if copy_base:
        shutil.copytree(source / "base", run / "base", symlinks=True)
    else:
        (run / "base").symlink_to(source / "base")
    return run


@pytest.mark.slow
def test_routing_an_earlier_probe_gives_what_measuring_gives_and_refuses_another_measurement(tmp_path):
    settings = _settings(tmp_path)
    first = tmp_path / "run"
    pipeline(**settings, stop_after="probe")
    measured = json.loads((first / "probe" / "probe_meta.json").read_text())
    assert set(measured["measured_with"]) >= {"model", "corpus", "max_length", "protocol"}

    kurtosis = replace(settings["probe"], router=_router("kurtosis"))
    # measured afresh with the kurtosis router ...
    fresh = _linked_run(tmp_path, "fresh", first)
    pipeline(**{**settings, "run_dir": str(fresh), "probe": kurtosis}, stop_after="probe")
    # ... and routed from the gini run's records, on a copy of the base (compared by content, not path)
    reused = _linked_run(tmp_path, "reused", first, copy_base=True)
    pipeline(**{**settings, "run_dir": str(reused), "probe": replace(kurtosis, scores_from=str(first / "probe"))},
             stop_after="probe")
    partition = json.loads((reused / "probe" / "partition.json").read_text())
    assert partition == json.loads((fresh / "probe" / "partition.json").read_text())
    assert partition != json.loads((first / "probe" / "partition.json").read_text())  # kurtosis, not gini, split it
    info = read_stage_marker(reused, "probe")["info"]
    assert info["probed"] is False and info["scores_from"] == str(first / "probe")
    assert info["measured_seconds"] == measured["probe_seconds"] > 0
    # the reusing run counts the measured pass as its probe cost
    assert build_report(reused)["compute_seconds"]["probe"] >= measured["probe_seconds"]

    # another token limit is another measurement: refused, naming it, with nothing marked done
    other = _linked_run(tmp_path, "other", first)
    cut = replace(kurtosis, max_length=64, scores_from=str(first / "probe"))
    with pytest.raises(ValueError, match=r"probe\.scores_from: .*probe_meta\.json was measured with other max_length"):
        pipeline(**{**settings, "run_dir": str(other), "probe": cut}, stop_after="probe")
    assert read_stage_marker(other, "probe") is None

    # a base trained further is another model
    changed = _linked_run(tmp_path, "changed", first, copy_base=True)
    weights = next((changed / "base" / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match=r"measured with other model"):
        pipeline(**{**settings, "run_dir": str(changed), "probe": replace(kurtosis, scores_from=str(first / "probe"))},
                 stop_after="probe")


def test_scores_from_must_name_an_earlier_probe(tmp_path):
    from prism_lit.pipeline.config import ProbeSettings

    with pytest.raises(FileNotFoundError, match=r"probe\.scores_from: .*nowhere.* has no probe\.jsonl"):
        ProbeSettings(scores_from=str(tmp_path / "nowhere"))


def test_a_damaged_probe_meta_is_named_with_its_line(tmp_path):
    from prism_lit.probe.reuse import reuse_records

    (tmp_path / "probe.jsonl").write_text("")
    (tmp_path / "probe_meta.json").write_text('{"units": [\n  "a",\n')
    with pytest.raises(ValueError, match=r"probe_meta\.json, line 3: not valid JSON"):
        reuse_records(tmp_path, {}, [])
    (tmp_path / "probe_meta.json").write_text('{"n_records": 3}')
    with pytest.raises(ValueError, match=r"probe_meta\.json: expected a JSON object with a 'units' list"):
        reuse_records(tmp_path, {}, [])


@pytest.mark.slow
def test_compare_measures_once_for_every_router_that_reads_the_probe(tmp_path):
    from prism_lit.pipeline.compare import compare

    configs = _compare_configs(tmp_path, (("prism-gini", "PrismRouter"), ("inverse", "InverseRouter"),
                                          ("random", "RandomRouter")))
    out = tmp_path / "cmp"
    compare(configs, seeds=[0], out_dir=str(out), reference="random", workers=2)
    gini, inverse = (read_stage_marker(out / m / "seed0", "probe")["info"] for m in ("prism-gini", "inverse"))
    assert gini["probed"] is True and "scores_from" not in gini
    assert inverse["probed"] is False and inverse["scores_from"] == str(out / "prism-gini" / "seed0" / "probe")
    # the inverse router split the same records the other way round
    gini_part, inverse_part = (json.loads((out / m / "seed0" / "probe" / "partition.json").read_text())
                               for m in ("prism-gini", "inverse"))
    assert set(gini_part["rl_ids"]) == set(inverse_part["sft_ids"])
    # and both methods pay the one pass in the table's compute columns
    table = json.loads((out / "comparison.json").read_text())["methods"]
    assert table["inverse"]["metrics"]["seconds/probe"]["mean"] >= inverse["measured_seconds"] > 0
    assert "scores_from" not in read_stage_marker(out / "random" / "seed0", "probe")["info"]
