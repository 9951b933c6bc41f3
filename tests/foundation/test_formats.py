"""Readers round-trip their formats; bad input names the file, line and field."""

import json

import pytest

from prism_lit.data.formats import detect_format, load_trajectories, write_conversations
from prism_lit.data.schema import (
    Message,
    Trajectory,
    TrajectoryFormatError,
    read_trajectories,
    write_trajectories,
)


def _sample(i=0, loss=None):
    return Trajectory(
        id=f"t{i}", env="webshop", task_id=f"webshop/train/{i}", task_type="beauty",
        messages=[Message("system", "be good"), Message("user", "find soap"),
                  Message("assistant", "Action: search[soap]", loss), Message("user", "results"),
                  Message("assistant", "Action: click[1]")],
        reward=0.5, won=False, meta={"steps": 2},
    )


def test_prism_schema_round_trip(tmp_path):
    path = tmp_path / "t.jsonl"
    originals = [_sample(0), _sample(1, loss=False)]
    write_trajectories(path, originals)
    assert read_trajectories(path) == originals
    assert detect_format(path) == "prism"


@pytest.mark.parametrize("fmt", ["eto", "agentgym"])
def test_conversation_formats_round_trip(tmp_path, fmt):
    path = tmp_path / f"{fmt}.jsonl"
    originals = [_sample(0), _sample(1, loss=False)]
    write_conversations(path, originals, fmt)
    assert detect_format(path) == fmt
    back = load_trajectories(path, env="webshop")
    for a, b in zip(originals, back):
        assert (a.id, a.task_id, a.task_type) == (b.id, b.task_id, b.task_type)
        assert [(m.role, m.content, m.trained) for m in a.messages] == [(m.role, m.content, m.trained) for m in b.messages]


def test_agentgym_loss_flags_and_json_array(tmp_path):
    path = tmp_path / "agentgym.json"
    record = {"item_id": "webshop_7", "conversations": [
        {"from": "human", "loss": None, "value": "instruction"},
        {"from": "gpt", "loss": False, "value": "Ok."},
        {"from": "human", "loss": None, "value": "obs"},
        {"from": "gpt", "loss": True, "value": "Action: click[buy now]"}]}
    path.write_text(json.dumps([record]))
    (t,) = load_trajectories(path)
    assert [m.trained for m in t.messages] == [False, False, False, True]
    assert t.id == "webshop_7"


BAD_CASES = [
    ("{not json", 2, None, "malformed JSON"),
    (json.dumps({"env": "w", "task_id": "x", "messages": []}), 2, "id", "missing"),
    (json.dumps({"id": "a", "env": "w", "task_id": "x", "messages": [{"role": "robot", "content": "hi"}]}),
     2, "messages[0].role", "unknown role"),
    (json.dumps({"id": "a", "env": "w", "task_id": "x",
                 "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
     2, "messages[1].content", "empty assistant turn"),
    (json.dumps({"id": "a", "env": "w", "task_id": "x", "messages": [{"role": "user", "content": "q"}]}),
     2, "messages", "no turn is trained"),
]


@pytest.mark.parametrize("line,lineno,field,words", BAD_CASES)
def test_bad_prism_input_names_file_line_field(tmp_path, line, lineno, field, words):
    good = json.dumps(_sample(0).to_dict())
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(TrajectoryFormatError) as err:
        load_trajectories(path)
    assert err.value.path == str(path) and err.value.line == lineno and err.value.field == field
    assert words in str(err.value) and str(path) in str(err.value) and f"line {lineno}" in str(err.value)


def test_bad_eto_speaker_names_field(tmp_path):
    path = tmp_path / "eto.jsonl"
    path.write_text(json.dumps({"id": 1, "conversations": [{"from": "bot", "value": "x"}]}) + "\n")
    with pytest.raises(TrajectoryFormatError, match=r"line 1, field 'conversations\[0\]\.from'"):
        load_trajectories(path)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown trajectory format"):
        load_trajectories(tmp_path / "x.jsonl", format="sharegpt")
    with pytest.raises(FileNotFoundError, match="x.jsonl"):
        load_trajectories(tmp_path / "x.jsonl")
