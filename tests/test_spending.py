"""The worker's side of budgets on real Redis: no call starts whose worst case would overrun the job's hold."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from events import jobs, keys
from events.budgets import Budget, BudgetScripts, call_cost_bound, hold_member, period_keys, period_ttls, settle_call
from events.prices import PriceBook
from events.sweeper import Sweeper
from tests.stack import ROOT
from workers.agents.base import AgentError, BudgetExhausted
from workers.llm.base import ChatRequest, Usage
from workers.spending import Spending

PRICES = PriceBook(ROOT / "tests" / "data" / "prices.yaml")
_ids = itertools.count()


def make_job(r: redis.Redis, amount: int, model: str = "house-model") -> dict[str, str]:
    user, job_id = f"spender{next(_ids)}", f"j_{next(_ids) + 9_000_000:032x}"
    record = jobs.job_record(job_id=job_id, owner=user, agent="query", model=model, query="q", max_tokens=100,
                             now=time.time())
    r.hset(keys.job(job_id), mapping=record)
    now = time.time()
    reply = BudgetScripts.register(r).hold(
        keys=[keys.budget_config(user), *period_keys(user, now), keys.budget_hold(user, job_id), keys.HOLDS_INDEX],
        args=[amount, now + 60, hold_member(user, job_id), job_id, user, *period_ttls(), "user"])
    assert reply[0] == "held"
    return record


def spending(r: redis.Redis, job: dict[str, str]) -> Spending:
    return Spending(r, BudgetScripts.register(r), PRICES, job, 1, "offline", time.time)


def request(prompt_chars: int, max_tokens: int = 100) -> ChatRequest:
    return ChatRequest("house-model", [{"role": "user", "content": "x" * prompt_chars}], max_tokens)


def set_budget(r: redis.Redis, user: str, limit_micros: int) -> None:
    r.hset(keys.budget_config(user), "user", Budget("user", limit_micros, "total").to_json())


def test_the_hold_grows_call_by_call_and_a_call_past_the_budget_never_starts(r: redis.Redis) -> None:
    price = PRICES.price("house-model")
    bound = call_cost_bound(price, prompt_bytes=1000 + 40, max_tokens=100)  # the JSON framing adds bytes
    job = make_job(r, amount=bound + 50)
    set_budget(r, job["owner"], 3 * bound)  # set after the submit: it binds the calls all the same
    guard = spending(r, job)
    guard.before_call(request(1000))
    assert guard.amount == bound + 50  # the hold covered it already
    guard.charge(Usage("house-model", 300, 100), call=0)
    guard.before_call(request(1000))
    assert bound + 50 < guard.amount <= guard.spent + bound  # grown to what was spent plus this call's worst case
    hold = r.hgetall(keys.budget_hold(job["owner"], job["id"]))
    assert int(hold["amount"]) == guard.amount
    with pytest.raises(BudgetExhausted, match="budget for scope 'user'"):
        guard.before_call(request(50_000))
    [period] = [k for k in r.keys(f"budget:{{{job['owner']}}}:p:*") if k.endswith("total")]
    assert int(r.hget(period, "held:user")) == guard.amount  # the refused call reserved nothing


def test_charges_are_counted_once_each_and_later_attempts_see_them(r: redis.Redis) -> None:
    job = make_job(r, amount=2_000)
    guard = spending(r, job)
    figures = guard.charge(Usage("house-model", 300, 100), call=0)  # 300 × $3/M + 100 × $6/M = 1,500 micros
    assert figures["cost_micros"] == 1_500 and figures["price_source"] == "overrides:prices.yaml"
    assert int(r.hget(keys.budget_hold(job["owner"], job["id"]), "spent")) == 1_500
    assert int(r.hget(keys.job(job["id"]), "cost_micros")) == 1_500
    guard.charges -= 1  # the same charge sent again, as after a lost connection: it counts once
    guard.charge(Usage("house-model", 300, 100), call=0)
    assert int(r.hget(keys.job(job["id"]), "cost_micros")) == 1_500
    set_budget(r, job["owner"], 2_000)
    with pytest.raises(BudgetExhausted):
        guard.before_call(request(10, max_tokens=100))  # worst case 10+ bytes in, 600 micros out: over 500 left
    again = spending(r, job)  # a later attempt sees what earlier ones spent
    assert again.spent == 1_500 and again.amount == 2_000


def test_a_job_without_a_hold_may_not_spend_on_a_priced_model(r: redis.Redis) -> None:
    job = make_job(r, amount=1_000)
    BudgetScripts.register(r).settle(*settle_call(job["owner"], job["id"], time.time()))
    with pytest.raises(BudgetExhausted):
        spending(r, job).before_call(request(10))


def test_an_unpriced_model_stops_the_agent_with_a_clear_error(r: redis.Redis) -> None:
    job = make_job(r, amount=1_000)
    guard = spending(r, job)
    with pytest.raises(AgentError, match="has no price"):
        guard.before_call(ChatRequest("mystery-model", [], 10))


def test_the_sweeper_settles_holds_of_ended_or_vanished_jobs_and_extends_live_ones(r: redis.Redis) -> None:
    live, ended, vanished = (make_job(r, amount=5_000) for _ in range(3))
    r.hset(keys.job(ended["id"]), "status", "failed")
    r.hincrby(keys.budget_hold(ended["owner"], ended["id"]), "spent", 1_234)
    r.delete(keys.job(vanished["id"]))
    later = time.time() + 120  # past every hold's expiry
    sweeper = Sweeper(r, "agents-test", grace_s=1, job_ttl_s=60, stream_ttl_s=60, hold_ttl_s=30,
                      clock=lambda: later)
    outcome = sweeper.sweep_holds()
    assert outcome["settled"] >= 2 and outcome["extended"] >= 1
    assert r.exists(keys.budget_hold(live["owner"], live["id"]))
    assert r.zscore(keys.HOLDS_INDEX, hold_member(live["owner"], live["id"])) == pytest.approx(later + 30)
    for job in (ended, vanished):
        assert not r.exists(keys.budget_hold(job["owner"], job["id"]))
        assert r.zscore(keys.HOLDS_INDEX, hold_member(job["owner"], job["id"])) is None
    [period] = [k for k in r.keys(f"budget:{{{ended['owner']}}}:p:*") if k.endswith("total")]
    assert r.hget(period, "spent:user") == "1234" and int(r.hget(period, "held:user") or 0) == 0
