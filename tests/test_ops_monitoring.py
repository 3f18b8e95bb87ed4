"""The monitoring configuration under ops/: Prometheus config, alert rules and their tests, Grafana files.

promtool checks the config and the rules and runs the rules' unit tests; every PromQL expression of the
dashboard goes through promtool too. Metric names must belong to the contract the processes export, and
system-wide families (the same from every API instance) must be aggregated with `max`, per-process ones with
`sum`. No server is started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
GRAFANA_DIR = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "agentic-backend.json"

SEED_PANELS = [
    "HTTP Requests (Total)",
    "Active Sessions",
    "HTTP Request Rate (req/sec)",
    "HTTP Request Latency (p50, p90, p99)",
    "Agent Query Rate by Type",
    "Agent Query Duration by Type",
    "API Cost by Model (USD)",
    "Token Usage by Model",
    "Cache Hit Rate",
    "Total API Cost (USD)",
    "Total Tokens Used",
    "Authentication Success/Failure Rate",
    "Permission Checks (Allowed/Denied)",
]
EXTRA_PANELS = [
    "Queue Depth",
    "Consumer Lag and Pending",
    "Dead Letters",
    "Budget Holds Outstanding",
    "SSE Streams Open",
    "Jobs by Status",
    "LLM Errors by Kind",
    "Workers Up",
]
UNITS = {"reqps", "ops", "s", "currencyUSD", "short", "percentunit", "bytes"}

# The contract: families each process keeps (sum them across instances) ...
PROCESS_COUNTERS = {
    "http_requests_total",
    "auth_attempts_total",
    "permission_checks_total",
    "agentic_rate_limited_total",
    "agent_queries_total",
    "api_cost_dollars_total",
    "api_tokens_total",
    "cache_operations_total",
    "llm_calls_total",
    "llm_errors_total",
}
PROCESS_GAUGES = {"active_requests", "agentic_sse_streams_open", "cache_size_bytes"}
PROCESS_HISTOGRAMS = {"http_request_duration_seconds", "agent_query_duration_seconds"}
# ... and system-wide state read from Redis, identical on every API instance (take the max).
SYSTEM_FAMILIES = {
    "active_sessions",
    "agentic_queue_depth",
    "agentic_jobs_total",
    "agentic_jobs_running",
    "agentic_consumer_lag",
    "agentic_consumer_pending",
    "agentic_dead_letters",
    "agentic_budget_holds",
    "agentic_budget_alerts_total",
    "agentic_workers_up",
    "agentic_consumer_idle_seconds",
    "agentic_consumers",
    "agentic_queue_unacked",
}
OTHER_FAMILIES = {"up", "flower_worker_online", "flower_events_total"}  # Prometheus's own; Flower's
PROCESS_SAMPLES = (
    PROCESS_COUNTERS
    | PROCESS_GAUGES
    | {f"{h}{suffix}" for h in PROCESS_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
CONTRACT = PROCESS_SAMPLES | SYSTEM_FAMILIES | OTHER_FAMILIES

# Grafana's built-in interval variables, replaced by a fixed range before promtool sees an expression.
GRAFANA_VARIABLE = re.compile(r"\$(?:__range|__rate_interval|__interval)\b|\$\{__(?:range|rate_interval|interval)}")
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def load_dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        return json.load(f)


def dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in load_dashboard()["panels"] for t in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def all_exprs() -> list[str]:
    return dashboard_exprs() + [rule["expr"] for rule in alert_rules()]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label matchers, groupings, ranges and functions left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings may contain anything
    expr = re.sub(r"\{[^}]*}", "", expr)  # label matchers
    expr = re.sub(r"\[[^]]*]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in PROMQL_KEYWORDS}


def promtool_run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    across = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
    down = a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    return across and down


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary (Debian's `prometheus` package installs it)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); the monitoring files are unchecked")
    return path


# --- Prometheus -------------------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool_check_once_its_secrets_exist(promtool: str, tmp_path: Path) -> None:
    config_dir = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, config_dir, ignore=shutil.ignore_patterns("api_key", "flower_password"))
    (config_dir / "secrets" / "api_key").write_text("ak_test\n")
    (config_dir / "secrets" / "flower_password").write_text("not-admin\n")

    result = promtool_run(promtool, "check", "config", "prometheus.yml", cwd=config_dir)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_scrapes_api_workers_flower_and_itself_with_their_credentials() -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["alerts.yml"]
    assert set(jobs) == {"api", "workers", "flower", "prometheus"}
    assert jobs["api"]["metrics_path"] == "/api/v1/monitoring/metrics"
    assert jobs["api"]["authorization"] == {"type": "Bearer", "credentials_file": "secrets/api_key"}
    assert jobs["workers"]["metrics_path"] == "/metrics"
    assert "authorization" not in jobs["workers"] and "basic_auth" not in jobs["workers"]
    assert jobs["flower"]["basic_auth"] == {"username": "admin", "password_file": "secrets/flower_password"}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    assert targets == {
        "api": ["127.0.0.1:8000"],
        "workers": ["127.0.0.1:9540"],
        "flower": ["127.0.0.1:5555"],
        "prometheus": ["127.0.0.1:9090"],
    }


def test_prometheus_secrets_are_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not in a git checkout")
    for name in ("api_key", "flower_password"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", f"ops/prometheus/secrets/{name}"], cwd=ROOT, timeout=30, check=False
        )
        assert ignored.returncode == 0, f"ops/prometheus/secrets/{name} would be committed"


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_waits_has_a_severity_and_says_what_happened() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]

    assert len(names) == len(set(names)) == 11
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [
        case
        for test in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]

    for name in (rule["alert"] for rule in alert_rules()):
        expected = [case["exp_alerts"] or [] for case in cases if case["alertname"] == name]
        assert any(expected), f"no test case where {name} fires"
        assert not all(expected), f"no test case where {name} stays quiet"
        for alerts in expected:
            for alert in alerts:
                assert "severity" in alert["exp_labels"] and set(alert["exp_annotations"]) == {"summary", "description"}


# --- Grafana ----------------------------------------------------------------------------------------------


def test_dashboard_has_the_seed_panels_in_order_then_ours() -> None:
    dashboard = load_dashboard()
    titles = [panel["title"] for panel in dashboard["panels"]]

    assert dashboard["uid"] == "agentic-backend"
    assert dashboard["title"] == "Agentic Backend"
    assert dashboard["schemaVersion"] == 39
    assert titles[:13] == SEED_PANELS
    assert titles[13:] == EXTRA_PANELS


def test_every_panel_has_an_id_a_place_a_unit_and_a_prometheus_query() -> None:
    panels = load_dashboard()["panels"]
    ids = [panel["id"] for panel in panels]

    assert len(ids) == len(set(ids))
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        assert set(panel["gridPos"]) >= {"x", "y", "w", "h"}, title
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, title
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, title
        assert panel["targets"], title
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], title
            assert target.get("datasource", panel["datasource"])["uid"] == "prometheus", title


def test_no_two_panels_overlap_on_the_grid() -> None:
    panels = load_dashboard()["panels"]

    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": GRAFANA_VARIABLE.sub("5m", expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = promtool_run(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (le) (rate(http_request_duration_seconds_bucket{route=~"/api/v1/.*"}[5m]))',
            {"http_request_duration_seconds_bucket"},
        ),
        ("sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) * 3600", {"a_sum", "a_count"}),
        ('up{job="api"} == 0', {"up"}),
        ("max(increase(agentic_budget_alerts_total[$__range])) > 0", {"agentic_budget_alerts_total"}),
        ("histogram_quantile(0.95, sum without (instance) (rate(x_bucket[5m]))) > 5e0", {"x_bucket"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_dashboard_and_alerts_use_only_metrics_the_system_exports() -> None:
    used = set().union(*(metric_names(expr) for expr in all_exprs()))

    assert used <= CONTRACT, f"not exported by the system: {sorted(used - CONTRACT)}"
    assert {"agentic_queue_depth", "agentic_consumer_lag", "http_requests_total"} <= used


def test_system_families_are_aggregated_with_max_and_process_families_with_sum() -> None:
    for expr in all_exprs():
        names = metric_names(expr)
        if names & SYSTEM_FAMILIES:
            assert re.search(r"\bmax\b", expr) and not re.search(r"\bsum\b", expr), expr
        if names & PROCESS_SAMPLES:
            assert re.search(r"\bsum\b", expr) and not re.search(r"\bmax\b", expr), expr


def test_grafana_provisioning_points_at_the_prometheus_datasource_and_the_dashboards() -> None:
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")["providers"]

    assert [(d["name"], d["type"], d["uid"]) for d in datasources] == [("Prometheus", "prometheus", "prometheus")]
    assert datasources[0]["url"] == "http://127.0.0.1:9090"
    assert len(providers) == 1 and providers[0]["type"] == "file"
    path = providers[0]["options"]["path"]
    assert path.startswith("/") and path.rstrip("/").endswith("/dashboards/agentic")
    uids = {panel["datasource"]["uid"] for panel in load_dashboard()["panels"]}
    assert uids == {datasources[0]["uid"]}
