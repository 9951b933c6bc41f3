"""The agent protocol: rendering, history bounds, reply formats, numbered actions."""

from prism_lit.envs.protocol import AgentProtocol, Turn


def test_numbered_actions_round_trip_and_number_pattern():
    admissible = ["click[back to search]", "click[b0abc12345]", "click[red]"]
    p = AgentProtocol(numbered_actions=True)
    assert p.format_reply("click[b0abc12345]", admissible=admissible) == "Action: 2"
    assert p.parse_action("Action: 2", admissible) == "click[b0abc12345]"
    assert p.parse_action("Action: click[red]", admissible) == "click[red]"
    assert p.parse_action("Action: 9", admissible) == "9"  # out of range: passed through, the env rejects it
    q = AgentProtocol(numbered_actions=True, number_pattern=r"^click\[b0")
    assert q.format_reply("click[b0abc12345]", admissible=admissible) == "Action: 2"
    assert q.format_reply("click[red]", admissible=admissible) == "Action: click[red]"
    assert "2. click[b0abc12345]" in q.render_observation("page", admissible)


def test_malformed_replies_are_none():
    p = AgentProtocol()
    assert p.parse_action("I think I will buy it", None) is None
    assert p.parse_action("Action:   ", None) is None
    t = AgentProtocol(reply_format="think_tags")
    assert t.parse_action("<think>x</think><action>click[buy now]</action>") == "click[buy now]"
    assert t.parse_action("<think>x</think>") is None
    e = AgentProtocol(reply_format="thought_action")
    assert e.parse_action(e.format_reply("look", "I should look.")) == "look"


def test_history_keeps_first_observation_and_last_k_turns():
    p = AgentProtocol(history_turns=2)
    turns = [Turn(f"obs{i}", f"Action: a{i}") for i in range(5)]
    messages = p.build_messages(turns, "obs5")
    contents = [m["content"] for m in messages[1:]]
    assert contents == ["obs0", "Action: a0", "obs3", "Action: a3", "obs4", "Action: a4", "obs5"]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    full = AgentProtocol(history_turns=8).build_messages(turns, "obs5")
    assert len(full) == 1 + 2 * 5 + 1


def test_spaces_inside_brackets_are_stripped():
    p = AgentProtocol(env="webshop")
    assert p.parse_action("Action: click[ white ]") == "click[white]"
    assert p.parse_action("Action: search[  red soap]") == "search[red soap]"


def test_compact_webshop_prompts_list_only_numbered_actions_and_state_the_task_once():
    p = AgentProtocol(env="webshop", numbered_actions=True, number_pattern=r"^click\[b0", list_only_numbered=True,
                      repeat_task=False)
    first = "WebShop [SEP] Instruction: [SEP] i need red soap [SEP] Search"
    assert p.render_observation(first, ["search[<your query>]"]) == first  # the task stays in the first page
    results = ["click[back to search]", "click[b0aaa]", "click[b0bbb]"]
    page = p.render_observation("Instruction: [SEP] i need red soap [SEP] Back to Search [SEP] B0AAA", results)
    assert page == "Back to Search [SEP] B0AAA\nAdmissible actions:\n1. click[b0aaa]\n2. click[b0bbb]"
    assert p.parse_action("Action: 2", results) == "click[b0bbb]"
    assert p.format_reply("click[b0bbb]", admissible=results) == "Action: 2"
    item = p.render_observation("Instruction: [SEP] i need red soap [SEP] color [SEP] red", ["click[red]"])
    assert item == "color [SEP] red"  # nothing numbered here: no list, the option is written out
    assert p.parse_action("Action: click[red]", ["click[red]"]) == "click[red]"


def test_text_replies_are_the_whole_response():
    """Free-text envs (instruction following): every line of the response is the action, thinking dropped."""
    p = AgentProtocol(reply_format="text")
    response = "Title: <<Tea>>\n\n* one\n* two [x]\nP.S. done"
    assert p.format_reply(response) == response
    assert p.parse_action(response) == response
    assert p.parse_action("<think>plan</think>\n" + response) == response
    assert p.parse_action("   ") is None and p.stop_strings == []


def test_an_env_spec_sets_its_commands_default_protocol():
    from prism_lit.envs import env_spec

    protocol = env_spec("instruction_following").default_protocol()
    assert (protocol.reply_format, protocol.history_turns, protocol.env) == ("text", 0, "instruction_following")
    assert env_spec("webshop").default_protocol().reply_format == "action"
