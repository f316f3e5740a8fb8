"""Offline WebShop environment: goals (spec §2), pages (§4-§5), transitions (§6), protocol behaviour."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlib.envs.base import ActionSpace, EpisodeOverError
from qlib.envs.webshop import WebShopEnv, human_goals, parse_action, synthetic_goals
from qlib.envs.webshop.goals import NO_PRICE_LIMIT
from qlib.envs.webshop.oracle import oracle_actions, oracle_reward, run_oracle

ORDER_TABLE = [
    (0, "B0743JKHBV", 'Find me double sided, machine washable decorative pillows with printing technology with '
                      'size: 28" x 28"'),
    (1, "B09QCP4579", "Find me butt lifting, light weight women's shorts with high waist, tummy control with "
                      "color: black, and size: 3x-large"),
    (2, "B099WH1RTM", "Find me ready hang wall art with solid wood for living room with color: turtles and african "
                      "american couple, and size: 8x10 inch"),
    (3, "B09LSKQF8C", "Find me dual band streaming media players with quad core"),
    (4, "B09M63B87V", "Find me hand wash women's sweaters with long sleeve, stretch fabric, polyester spandex for "
                      "teen girls, daily wear with color: xnj-tshirt334-gray, and size: x-large"),
]


@pytest.fixture(scope="module")
def env() -> WebShopEnv:
    return WebShopEnv(max_steps=10)


def price_clause(goal) -> str:
    return "" if goal.price_upper == NO_PRICE_LIMIT else f", and price lower than {goal.price_upper:.2f} dollars"


def search_action(env: WebShopEnv, task_id: int) -> str:
    return oracle_actions(env, task_id)[0]


# -- goals -----------------------------------------------------------------------------------------
def test_goal_count_order_and_weights():
    goals = synthetic_goals()
    assert len(goals) == 6910
    for index, asin, text in ORDER_TABLE:
        goal = goals[index]
        assert (goal.index, goal.asin, goal.instruction_text) == (index, asin, text + price_clause(goal))
    assert goals[0].weight == pytest.approx(0.0530, abs=5e-5)
    assert goals[3].weight == 0.75
    assert [g.asin for g in human_goals()[:2]] == ["B09MW563KN", "B003I567W4"]
    assert len(human_goals()) == 13


def test_price_upper_is_seeded_and_above_the_price(env):
    for goal in env.goals[:200]:
        price = env.prices[goal.asin]
        if goal.price_upper != NO_PRICE_LIMIT:
            candidates = [10.0 * i for i in range(1, 100) if 10.0 * i > price][:4]
            assert goal.price_upper in candidates[1:]
    assert synthetic_goals() is env.goals  # cached process-wide


def test_splits(env):
    test, valid, train = env.task_ids("test"), env.task_ids("valid"), env.task_ids("train")
    assert (test[0], test[-1], valid[0], valid[-1], train[0], train[-1]) == (0, 499, 500, 1499, 1500, 6909)
    assert len(test) + len(valid) + len(train) == 6910
    with pytest.raises(ValueError):
        env.task_ids("dev")
    with pytest.raises(ValueError):
        env.reset(6910)


# -- pages -----------------------------------------------------------------------------------------
def test_start_page(env):
    goal = env.goals[3]
    assert env.reset(3) == f"WebShop [SEP] Instruction: [SEP] {goal.instruction_text} [SEP] Search"
    assert env.valid_actions() == ActionSpace({"search": None})


def test_results_page_format(env):
    env.reset(0)
    goal = env.goals[0]
    obs = env.step(search_action(env, 0)).observation
    shown = env.valid_actions().verbs["click"]
    assert shown[:2] == ("Back to Search", "Next >") and len(shown) == 12
    products = [env.catalogue.by_asin[a] for a in shown[2:]]
    body = "".join(f" [SEP] {p['asin']} [SEP] {p['Title']} [SEP] {p['Price']}" for p in products)
    head = f"Instruction: [SEP] {goal.instruction_text} [SEP] Back to Search [SEP] Page 1 (Total results: 50)"
    assert obs == f"{head} [SEP] Next >{body}"
    page2 = env.step("click[Next >]").observation
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next > [SEP] " in page2
    assert env.valid_actions().verbs["click"][:3] == ("Back to Search", "< Prev", "Next >")
    assert env.step("click[< Prev]").observation == obs


def test_empty_results_and_paging_past_the_end(env):
    env.reset(0)
    head = f"Instruction: [SEP] {env.goals[0].instruction_text} [SEP] Back to Search"
    assert env.step("search[qqqzzzxxy]").observation == f"{head} [SEP] Page 1 (Total results: 0) [SEP] Next >"
    assert env.valid_actions().verbs["click"] == ("Back to Search", "Next >")
    assert env.step("click[next >]").observation == f"{head} [SEP] Page 2 (Total results: 0) [SEP] < Prev [SEP] Next >"
    env.step(search_action(env, 0))
    for _ in range(5):
        obs = env.step("click[Next >]").observation
    assert obs.endswith("Page 6 (Total results: 50) [SEP] < Prev [SEP] Next >")


def test_item_page_and_sub_pages(env):
    env.reset(1)
    goal = env.goals[1]
    actions = oracle_actions(env, 1)
    for action in actions[:-3]:
        result = env.step(action)
    product = env.catalogue.by_asin[goal.asin]
    options = "".join(f" [SEP] {name} [SEP] " + " [SEP] ".join(values) for name, values in product["options"].items())
    head = f"Instruction: [SEP] {goal.instruction_text} [SEP] Back to Search [SEP] < Prev"
    assert result.observation == (f"{head}{options} [SEP] {product['Title']} [SEP] Price: {product['Price']} "
                                  "[SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now")
    assert env.step(actions[-3]).observation == result.observation  # selecting an option shows the same text
    assert env.step("click[Features]").observation == head + "".join(
        f" [SEP] {b.strip()}" for b in product["BulletPoints"])
    assert env.valid_actions().verbs["click"] == ("Back to Search", "< Prev")
    assert env.step("click[< Prev]").observation == result.observation
    assert env.step("click[Reviews]").observation == head
    env.step("click[< Prev]")
    assert env.snapshot().options == ((goal.goal_options[0][0], goal.goal_options[0][1]),)  # kept across sub-pages
    assert env.step("click[< Prev]").observation.startswith(head.replace(" [SEP] < Prev", " [SEP] Page 1"))
    assert env.snapshot().options == () and env.snapshot().asin is None


def test_description_page_without_description(env):
    empty = next(p["asin"] for p in env.catalogue.products if not p["Description"])
    env.reset(0)
    env.step(f"search[{env.catalogue.by_asin[empty]['Title']}]")
    assert empty in env.valid_actions().verbs["click"]
    env.step(f"click[{empty}]")
    assert env.step("click[description]").observation.endswith("[SEP] Back to Search [SEP] < Prev")


# -- purchases -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_id", [0, 1, 3, 4])
def test_scripted_purchase_of_the_target_earns_1(env, task_id):
    env.reset(task_id)
    goal = env.goals[task_id]
    for action in oracle_actions(env, task_id):
        result = env.step(action)
    assert result.done and result.reward == 1.0 and not result.info["invalid"]
    assert result.info["asin"] == goal.asin and result.info["options"] == dict(goal.goal_options)
    assert result.info["reward_details"]["r_type"] == 1.0
    options = json.dumps(dict(goal.goal_options), sort_keys=True)
    assert (f"Purchased [SEP] asin [SEP] {goal.asin} [SEP] options [SEP] {options} [SEP] attrs" in result.observation)
    assert result.observation.startswith("Thank you for shopping with us! [SEP] Your code: [SEP] None [SEP] ")
    assert result.observation.endswith("Your score (min 0.0, max 1.0) [SEP] 1.0 [SEP] Reward Details [SEP] None")
    assert env.valid_actions() == ActionSpace({})
    with pytest.raises(EpisodeOverError, match="bought"):
        env.step("click[Buy Now]")


def test_buying_without_options_or_a_wrong_product(env):
    goal = env.goals[1]
    env.reset(1)
    actions = oracle_actions(env, 1)
    for action in actions[:-3]:
        env.step(action)
    n_attr = len(goal.attributes)
    expected = (n_attr + 1) / (n_attr + len(goal.goal_options) + 1)
    result = env.step("click[Buy Now]")
    assert result.reward == pytest.approx(expected) and result.info["options"] == {}
    assert result.observation.split(" [SEP] ")[-3] == str(result.reward)


def test_oracle_ceiling():
    assert oracle_reward("test", limit=100) > 0.99


# -- protocol ----------------------------------------------------------------------------------------
INVALID_ACTIONS = [
    "", "   ", "garbage", "search[]", "search", "click[]", "Search[red dress]", "Click[Buy Now]", "buy[now]",
    "click[search]", "click[Buy Now]", "click[Next >]", "click[B0000000XX]", "search[a [b]]", "click [Buy Now]",
    "\nsearch[dress]", None, 42, ["search[dress]"],
]


@pytest.mark.parametrize("action", INVALID_ACTIONS)
def test_invalid_actions_change_nothing(env, action):
    start = env.reset(0)
    result = env.step(action)
    assert result == (start, 0.0, False, {"invalid": True, "steps": 1, "truncated": False})


def test_invalid_clicks_on_results_and_item_pages(env):
    env.reset(0)
    results = env.step(search_action(env, 0)).observation
    for action in ("click[< Prev]", "click[Buy Now]", "click[Description]", "click[28\" x 28\"]"):
        assert env.step(action)[:3] == (results, 0.0, False)
    env.step(f"click[{env.goals[0].asin}]")
    item = env.observation
    other = next(a for a in env.catalogue.asins if a != env.goals[0].asin)
    for action in (f"click[{other}]", "click[Next >]", "click[red]"):
        result = env.step(action)
        assert result.observation == item and result.info["invalid"]


def test_parse_action():
    assert parse_action("click[Buy Now]") == ("click", "buy now")
    assert parse_action("search[Red Dress]\nclick[x]") == ("search", "red dress")
    assert parse_action("click[B0743JKHBV] because") == ("click", "b0743jkhbv")
    assert parse_action("search[a [b]]") == ("search[a ", "b]")
    assert parse_action("search[]") is None


def test_search_is_accepted_on_every_page_but_offered_on_the_start_page(env):
    env.reset(0)
    env.step(search_action(env, 0))
    env.step(f"click[{env.goals[0].asin}]")
    assert "search" not in env.valid_actions().verbs
    result = env.step("search[pillow]")
    assert not result.info["invalid"] and " [SEP] Page 1 (Total results: " in result.observation
    assert env.snapshot().keywords == ("pillow",)


def test_case_insensitive_click_arguments(env):
    env.reset(0)
    env.step(search_action(env, 0))
    result = env.step(f"click[{env.goals[0].asin.lower()}]")
    assert not result.info["invalid"] and env.snapshot().asin == env.goals[0].asin
    assert env.snapshot().visited == frozenset({env.goals[0].asin})


def test_back_to_search_clears_the_session(env):
    start = env.reset(0)
    env.step(search_action(env, 0))
    env.step(f"click[{env.goals[0].asin}]")
    result = env.step("click[back to search]")
    snap = env.snapshot()
    assert result.observation == start and snap.keywords == () and snap.asin is None
    assert snap.visited == frozenset() and snap.steps == 3
    assert env.valid_actions() == ActionSpace({"search": None})


def test_snapshot_restore_replay(env):
    env.reset(1)
    actions = oracle_actions(env, 1)
    at_snapshot = env.step(actions[0]).observation
    snap = env.snapshot()
    frozen = (snap.page, snap.keywords, snap.page_num, snap.asin, snap.options, snap.visited, snap.steps, snap.done)
    first = [env.step(a) for a in ["click[Next >]", "click[< Prev]", *actions[1:]]]
    assert (snap.page, snap.keywords, snap.page_num, snap.asin, snap.options, snap.visited, snap.steps,
            snap.done) == frozen
    with pytest.raises(Exception):
        snap.steps = 0  # frozen
    env.restore(snap)
    assert env.observation == at_snapshot and env.snapshot() is snap
    second = [env.step(a) for a in ["click[Next >]", "click[< Prev]", *actions[1:]]]
    assert [r[:3] for r in first] == [r[:3] for r in second]
    assert [r.info for r in first] == [r.info for r in second]
    env.restore(snap)  # restoring into a finished episode's env starts over from the snapshot
    assert env.step(actions[1]).info["invalid"] is False


def test_restore_rejects_foreign_values(env):
    env.reset(0)
    with pytest.raises(TypeError):
        env.restore({"page": "start"})


def test_truncation_at_max_steps():
    env = WebShopEnv(max_steps=3)
    env.reset(0)
    assert env.step("garbage").info == {"invalid": True, "steps": 1, "truncated": False}
    env.step(search_action(env, 0))
    result = env.step("click[Next >]")
    assert result.done and result.reward == 0.0 and result.info["truncated"] and result.info["steps"] == 3
    with pytest.raises(EpisodeOverError, match="step limit"):
        env.step("click[< Prev]")
    env.reset(3)  # a purchase on the last allowed step keeps its reward
    for action in oracle_actions(env, 3):
        result = env.step(action)
    assert result.info["steps"] == 3 and result.done and result.reward == 1.0 and not result.info["truncated"]


def test_step_before_reset_and_env_factory():
    from qlib.config import load_config
    from qlib.envs import Environment, make

    env = make("webshop")  # built directly: the paper's step limit
    assert isinstance(env, WebShopEnv) and isinstance(env, Environment)
    assert env.max_steps == 10 and env.name == "webshop"
    assert make("webshop", load_config("smoke")).max_steps == load_config("smoke").env("webshop").max_steps != 10
    with pytest.raises(RuntimeError):
        env.step("search[x]")
    assert env.valid_actions() == ActionSpace({})


def test_oracle_runs_inside_budget(env):
    lengths = [len(oracle_actions(env, i)) for i in env.task_ids("test")[:100]]
    assert max(lengths) <= env.max_steps and min(lengths) >= 3
    assert run_oracle(env, 0) == 1.0
    assert re.fullmatch(r"B[0-9A-Z]{9}", env.goal.asin)


def test_option_clicks_replace_within_a_group_and_later_group_wins(env):
    from qlib.envs.webshop.pages import clickables
    from qlib.envs.webshop.session import ITEM, Session

    product = {"options": {"color": ["red", "one size"], "size": ["one size", "large", "description"]}}
    session = Session(goal=env.goals[0], page=ITEM, asin="X")
    table = clickables(session, {"X": product})
    assert table["one size"].group == "size" and table["red"].group == "color"
    assert table["description"].kind == "button"  # a button label stays a button
    assert list(table) == ["back to search", "< prev", "red", "one size", "large", "description", "features",
                           "reviews", "buy now"]
    session = Session(goal=env.goals[0], options=(("color", "red"), ("size", "large")))
    assert session.with_option("color", "blue") == (("color", "blue"), ("size", "large"))
    env.reset(1)
    for action in oracle_actions(env, 1)[:-1]:
        env.step(action)
    color = env.catalogue.by_asin[env.goals[1].asin]["options"]["color"]
    other = next(c for c in color if c != env.goals[1].goal_options[0][1])
    env.step(f"click[{other}]")
    assert env.snapshot().options == (("color", other), ("size", env.goals[1].goal_options[1][1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task_id=st.integers(0, 6909), picks=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99)), max_size=9))
def test_random_walks_never_raise_and_replay_identically(env, task_id, picks):
    """Random mixes of offered clicks, searches and garbage: invalid steps keep the page; replaying the
    same actions from the start snapshot reproduces every observation, reward, done and info."""
    env.reset(task_id)
    start = env.snapshot()
    words = env.goals[task_id].instruction_text.split()
    actions, results = [], []
    for kind, n in picks:
        if env.snapshot().done:
            break
        choices = env.valid_actions().verbs.get("click") or ("Buy Now",)
        action = [f"click[{choices[n % len(choices)]}]", f"search[{' '.join(words[n % 5:])}]",
                  f"click[{choices[n % len(choices)]}] trailing", f"Click[{n}]"][kind]
        before = env.observation
        result = env.step(action)
        if result.info["invalid"]:
            assert result.observation == before and result.reward == 0.0
        actions.append(action)
        results.append(result)
    env.restore(start)
    assert [env.step(a) for a in actions] == results
