"""The worker's side of budgets on real Redis: no call starts whose worst case would overrun the job's hold."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from events import job_record
from events.money.budgets import Budget, call_cost_bound
from events.money.prices import PriceBook
from events.process.sweeper import Sweeper
from events.store import budget_scripts, keyspace
from events.store.budget_scripts import Held, hold_member, settle_hold
from events.store.scripts import Scripts
from tests.stack import ROOT
from workers.agents.agent import AgentError, BudgetExhausted
from workers.llm.provider import ChatRequest, Usage
from workers.spending import Spending

PRICES = PriceBook(ROOT / "tests" / "data" / "prices.yaml")
_ids = itertools.count()


def make_job(r: redis.Redis, amount: int, model: str = "house-model") -> dict[str, str]:
    user, job_id = f"spender{next(_ids)}", f"j_{next(_ids) + 9_000_000:032x}"
    record = job_record.job_record(
        job_id=job_id, owner=user, agent="query", model=model, query="q", max_tokens=100, now=time.time()
    )
    r.hset(keyspace.job(job_id), mapping=record)
    now = time.time()
    reply = Scripts(r).run(
        budget_scripts.hold(
            user_id=user, job_id=job_id, amount_micros=amount, scopes=["user"], now=now, expires_at=now + 60
        )
    )
    assert reply.outcome is Held.HELD
    return record


def spending(r: redis.Redis, job: dict[str, str]) -> Spending:
    return Spending(r, PRICES, job, 1, "offline", time.time)


def request(prompt_chars: int, max_tokens: int = 100) -> ChatRequest:
    return ChatRequest("house-model", [{"role": "user", "content": "x" * prompt_chars}], max_tokens)


def set_budget(r: redis.Redis, user: str, limit_micros: int) -> None:
    r.hset(keyspace.budget_config(user), "user", Budget("user", limit_micros, "total").to_json())


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
    hold = r.hgetall(keyspace.budget_hold(job["owner"], job["id"]))
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
    assert int(r.hget(keyspace.budget_hold(job["owner"], job["id"]), "spent")) == 1_500
    assert int(r.hget(keyspace.job(job["id"]), "cost_micros")) == 1_500
    guard.charges -= 1  # the same charge sent again, as after a lost connection: it counts once
    guard.charge(Usage("house-model", 300, 100), call=0)
    assert int(r.hget(keyspace.job(job["id"]), "cost_micros")) == 1_500
    set_budget(r, job["owner"], 2_000)
    with pytest.raises(BudgetExhausted):
        guard.before_call(request(10, max_tokens=100))  # worst case 10+ bytes in, 600 micros out: over 500 left
    again = spending(r, job)  # a later attempt sees what earlier ones spent
    assert again.spent == 1_500 and again.amount == 2_000


def test_a_job_without_a_hold_may_not_spend_on_a_priced_model(r: redis.Redis) -> None:
    job = make_job(r, amount=1_000)
    settle_hold(Scripts(r), user_id=job["owner"], job_id=job["id"], now=time.time())
    with pytest.raises(BudgetExhausted):
        spending(r, job).before_call(request(10))


def test_an_unpriced_model_stops_the_agent_with_a_clear_error(r: redis.Redis) -> None:
    job = make_job(r, amount=1_000)
    guard = spending(r, job)
    with pytest.raises(AgentError, match="has no price"):
        guard.before_call(ChatRequest("mystery-model", [], 10))


def test_the_sweeper_settles_holds_of_ended_or_vanished_jobs_and_extends_live_ones(r: redis.Redis) -> None:
    live, ended, vanished = (make_job(r, amount=5_000) for _ in range(3))
    r.hset(keyspace.job(ended["id"]), "status", "failed")
    r.hincrby(keyspace.budget_hold(ended["owner"], ended["id"]), "spent", 1_234)
    r.delete(keyspace.job(vanished["id"]))
    later = time.time() + 120  # past every hold's expiry
    sweeper = Sweeper(r, "agents-test", grace_s=1, job_ttl_s=60, stream_ttl_s=60, hold_ttl_s=30, clock=lambda: later)
    outcome = sweeper.sweep_holds()
    assert outcome["settled"] >= 2 and outcome["extended"] >= 1
    assert r.exists(keyspace.budget_hold(live["owner"], live["id"]))
    assert r.zscore(keyspace.HOLDS_INDEX, hold_member(live["owner"], live["id"])) == pytest.approx(later + 30)
    for job in (ended, vanished):
        assert not r.exists(keyspace.budget_hold(job["owner"], job["id"]))
        assert r.zscore(keyspace.HOLDS_INDEX, hold_member(job["owner"], job["id"])) is None
    [period] = [k for k in r.keys(f"budget:{{{ended['owner']}}}:p:*") if k.endswith("total")]
    assert r.hget(period, "spent:user") == "1234" and int(r.hget(period, "held:user") or 0) == 0
