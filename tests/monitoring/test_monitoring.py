"""monitoring/: Prometheus config, alert rules and Grafana dashboards, checked with the real promtool and
Prometheus against a real server's /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServerProcess, free_port, require

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "tests" / "alerts_test.yml"
DASHBOARDS = sorted((MONITORING / "grafana").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Series Prometheus makes itself for every target, not exposed by /metrics.
SYNTHETIC = {"up"}
# Labels an alert annotation may print: none of them can hold a stream key, a source URL or a token.
SAFE_LABELS = {"instance", "job", "protocol", "tier", "reason", "status", "kind", "endpoint", "from", "to", "result"}
# What the dashboards' variables stand for when a query is run outside Grafana.
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$__interval": "5s",
    "$__range": "1m",
    "$job": "mediaserver",
    "$instance": ".*",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=30, check=False)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation query and template variable of every dashboard."""
    queries = []
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                queries.append((f"{name} panel {panel['title']!r} {target['refId']}", target["expr"]))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                queries.append((f"{name} annotation {annotation['name']!r}", annotation["expr"]))
    return queries


def variable_metrics() -> list[tuple[str, str]]:
    """(where, metric) of the label_values(metric{...}, label) template variables."""
    found = []
    for name, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                match = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*[{,].*\)", query)
                assert match, f"{name} variable {variable['name']}: unexpected query {query!r}"
                found.append((f"{name} variable {variable['name']}", match.group(1)))
    return found


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: strings, label matchers, ranges, grouping lists, offsets,
    numbers, keywords and function or aggregation names are not metrics."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_series(exposition: str) -> set[str]:
    """Series names a scrape of this exposition stores, from its # TYPE lines: a counter's own name (`_total` as
    exposed), a histogram's `_bucket`, `_sum` and `_count`, a summary's quantiles, `_sum` and `_count`. Families
    without children (labelled metrics nobody touched yet) count: their TYPE line is there."""
    names: set[str] = set()
    for line in exposition.splitlines():
        match = re.fullmatch(r"# TYPE (\S+) (\S+)", line)
        if not match:
            continue
        name, kind = match.groups()
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif kind == "summary":
            names |= {name, f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


# ----- the PromQL extraction itself --------------------------------------------------------------------------------


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{job="x", le=~"0.5|1e3"}[5m] offset 1h)))'
        ' > 0.25 and on (instance) (b_total - ignoring(tier) c) or vector(0) * 1e3 + d{instance=~"$instance"}'
        "[$__range:1m] unless bool e"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d", "e"}


def test_exposed_series_map_types_to_sample_names() -> None:
    exposition = (
        '# TYPE a_total counter\na_total 1\n# TYPE h_seconds histogram\nh_seconds_bucket{le="+Inf"} 0\n'
        "# TYPE g gauge\n# TYPE s summary\n"
    )
    assert exposed_series(exposition) == {
        "a_total",
        "h_seconds_bucket",
        "h_seconds_sum",
        "h_seconds_count",
        "g",
        "s",
        "s_sum",
        "s_count",
    }


# ----- promtool ------------------------------------------------------------------------------------------------------


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    document = yaml.safe_load(ALERT_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_alerts_carry_severity_duration_and_safe_annotations() -> None:
    for rule in rules():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) >= {"summary", "description"}, name
        for text in rule["annotations"].values():
            for template in re.findall(r"\{\{(.*?)\}\}", text):
                labels = re.findall(r"\$labels\.(\w+)", template)
                assert labels or "$value" in template, f"{name}: template {template!r} prints something else"
                assert set(labels) <= SAFE_LABELS, f"{name}: {template!r} prints a label that may hold a secret"
                assert "index" not in template and "$labels }}" not in template, name


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, as Grafana would send it, goes through promtool's PromQL parser."""
    queries = dashboard_queries()
    assert len(queries) > 60
    rule_file = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": substitute(expr)}
                    for index, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rule_file))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ----- Grafana JSON ------------------------------------------------------------------------------------------------


def test_dashboards_are_well_formed() -> None:
    boards = dashboards()
    assert set(boards) == {"system-health.json", "streaming.json", "storage.json"}
    uids = [board["uid"] for board in boards.values()]
    assert all(uids) and len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36, name
        assert board["title"], name
        variables = {variable["name"]: variable for variable in board["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource", name
        assert variables["DS_PROMETHEUS"]["query"] == "prometheus", name
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, (name, variable["name"])
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        graphs = [panel for panel in panels(board) if panel["type"] != "row"]
        assert len(graphs) >= 15, name
        for panel in panels(board):
            where = f"{name} panel {panel['id']}"
            assert isinstance(panel["title"], str) and panel["title"].strip(), where
            position = panel["gridPos"]
            assert position["x"] + position["w"] <= 24 and position["h"] > 0, where
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                assert isinstance(target["expr"], str) and target["expr"].strip(), where


def test_dashboards_name_no_host() -> None:
    for path in DASHBOARDS:
        text = path.read_text()
        for host in ("localhost", "127.0.0.1", "[::1]", "0.0.0.0"):
            assert host not in text, f"{path.name} hard-codes {host}"
        assert not re.search(r"\b[\w.-]+:\d{2,5}\b", text), f"{path.name} names a host:port"
    for where, expr in dashboard_queries():
        # Nodes and jobs are chosen with the $job and $instance variables only.
        for label, value in re.findall(r"\b(instance|job)\s*=~?\s*\"([^\"]*)\"", expr):
            assert value == f"${label}", f"{where}: {label} fixed to {value!r}"
        assert re.search(r'instance=~"\$instance"', expr), f"{where}: not filtered by $instance"


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [source["type"] for source in sources] == ["prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "mediaserver.yml").read_text())["providers"]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
    assert providers[0]["options"]["path"] in (MONITORING / "README.md").read_text()


# ----- against a real server ---------------------------------------------------------------------------------------


def test_every_metric_used_is_exposed(server: ServerProcess) -> None:
    exposed = exposed_series(server.get_text("/metrics")) | SYNTHETIC
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alerts.yml {rule['alert']}")
    for where, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    for where, name in variable_metrics():
        used.setdefault(name, set()).add(where)
    assert len(used) > 80
    missing = {name: sorted(places)[:3] for name, places in used.items() if name not in exposed}
    assert missing == {}, f"used by monitoring/ but not in the server's /metrics: {sorted(missing)}"


def _api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a bad query: Prometheus explains it in a JSON body
        return json.loads(exc.read())


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[int]:
    """A real Prometheus scraping the server every second and evaluating alerts.yml every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "mediaserver", "static_configs": [{"targets": [f"127.0.0.1:{server.http_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [
            require("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                result = _api(port, "query", query='up{job="mediaserver"}')["data"]["result"]
                if result and result[0]["value"][1] == "1":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_prometheus_evaluates_rules_and_dashboards(server: ServerProcess, prometheus: int) -> None:
    # Enough scrapes for rate() over the 10 s that stands for $__rate_interval, and a few rule evaluations.
    time.sleep(6)
    for where, expr in dashboard_queries():
        answer = _api(prometheus, "query", query=substitute(expr))
        assert answer["status"] == "success" and not answer.get("warnings"), (where, answer)
    # Queries that must see this server (metrics with a sample from the first scrape on).
    for expr in (
        'rate(process_cpu_seconds_total{job="mediaserver"}[10s])',
        'mediaserver_event_loop_lag_max_seconds{job="mediaserver"}',
        'sum(python_gc_collections_total{job="mediaserver"})',
    ):
        assert _api(prometheus, "query", query=expr)["data"]["result"], expr
    groups = _api(prometheus, "rules")["data"]["groups"]
    evaluated = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in evaluated} == {rule["alert"] for rule in rules()}
    for rule in evaluated:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # An idle, healthy server raises nothing (disk space depends on the machine, so those are left out).
    active = [
        (rule["name"], rule["state"])
        for rule in evaluated
        if rule["state"] != "inactive" and not rule["name"].startswith("MediaserverDisk")
    ]
    assert active == []
