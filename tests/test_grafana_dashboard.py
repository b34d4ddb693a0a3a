"""The Grafana dashboard in deploy/grafana queries only what the service exports.

Every PromQL expression in the dashboard (panel targets and template
variables) is reduced to the series it selects and the label names it uses,
and each is checked against the series a fresh `Metrics()` exports. Those
come from the registry's collectors' `describe()` (names and types, so no
traffic is needed) with the suffixes Prometheus sees: a counter `x` is
`x_total`, a histogram `x_bucket` (plus the `le` label), `x_sum` and
`x_count`. Renaming a metric or a label in service/metrics.py, or mistyping
one in the dashboard, fails `test_every_query_uses_exported_series_and_labels`.

The extractor is a small PromQL tokenizer, not a parser: identifiers followed
by `(` are functions, identifiers inside `{...}` are label names, lists after
`by`/`without`/`on`/`ignoring`/`group_left`/`group_right` are label names,
contents of `[...]` are ranges, and every other identifier that is not a
keyword is a metric name.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/semcache-dashboard.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"
ROWS = ["Traffic", "Cache", "Latency", "Money", "Upstream", "Storage", "Embedding"]
# Added by Prometheus when it scrapes a target, not by the service.
TARGET_LABELS = frozenset({"job", "instance"})
# The series each metric type exposes (OpenMetrics), as prometheus_client writes them.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk"
    " limit_ratio"
)
FUNCTIONS = AGGREGATIONS | _words(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil
    changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week
    day_of_year days_in_month deg delta deriv double_exponential_smoothing exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
    histogram_stdvar histogram_sum holt_winters hour idelta increase irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time
    minute month pi predict_linear present_over_time quantile_over_time rad rate resets
    round scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt
    stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
    start end"""
)
# Keywords that take a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LIST_KEYWORDS | frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
)

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
    |(?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],@:])
    """,
    re.VERBOSE,
)
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass(frozen=True)
class Selector:
    """One series selector: the metric it names and the label names it matches on."""

    metric: str
    labels: frozenset[str]


@dataclass(frozen=True)
class Grouping:
    """Label names in `by (...)` and the like, with the metrics they must be on."""

    labels: frozenset[str]
    metrics: frozenset[str]


@dataclass(frozen=True)
class QueryRefs:
    """What one PromQL expression refers to."""

    selectors: tuple[Selector, ...]
    groupings: tuple[Grouping, ...]

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


# --- the PromQL extractor ------------------------------------------------------


def tokenize(expr: str) -> list[Token]:
    """PromQL tokens without whitespace.

    Raises:
        ValueError: a character no PromQL token starts with.
    """
    tokens, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise ValueError(f"cannot tokenize {expr[at:]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group()))
        at = match.end()
    return tokens


def _closing(tokens: list[Token], start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    opening, depth = tokens[start].text, 0
    for at in range(start, len(tokens)):
        depth += (tokens[at].text == opening) - (tokens[at].text == pairs[opening])
        if depth == 0:
            return at
    raise ValueError(f"unbalanced {opening!r}")


def _label_list(tokens: list[Token], start: int) -> tuple[frozenset[str], int]:
    """The label names in `( a, b )` at `start`, and the index after `)`.

    Raises:
        ValueError: no parenthesised list of identifiers there.
    """
    if start >= len(tokens) or tokens[start].text != "(":
        raise ValueError("a label list must follow by/without/on/ignoring/group_*")
    end = _closing(tokens, start)
    inside = [t for t in tokens[start + 1 : end] if t.text != ","]
    if any(t.kind != "ident" for t in inside):
        raise ValueError(f"not a label list: {' '.join(t.text for t in inside)}")
    return frozenset(t.text for t in inside), end + 1


def _matchers(tokens: list[Token], start: int) -> tuple[frozenset[str], str | None, int]:
    """Label names matched in `{...}` at `start`, the `__name__` it pins, the index after `}`.

    Raises:
        ValueError: not a list of `label op "value"` matchers.
    """
    end, labels, name, at = _closing(tokens, start), set(), None, start + 1
    while at < end:
        label, op, value = tokens[at : at + 3]
        if label.kind != "ident" or op.text not in MATCH_OPS or value.kind != "string":
            raise ValueError(f"bad matcher at {label.text!r}")
        labels.add(label.text)
        if label.text == "__name__" and op.text == "=":
            name = value.text[1:-1]
        at += 3
        if at < end and tokens[at].text == ",":
            at += 1
    return frozenset(labels - {"__name__"}), name, end + 1


@dataclass
class _Walk:
    """Selectors and label lists found so far, with the token ranges label lists apply to."""

    selectors: list[tuple[int, Selector]]
    label_lists: list[tuple[frozenset[str], int, int]]


def _scope_of_by(tokens: list[Token], keyword_at: int, after_list: int) -> tuple[int, int]:
    """Token range an aggregation's `by`/`without` applies to: the parenthesised argument
    after the label list (`sum by (x) (...)`) or before the keyword (`sum(...) by (x)`)."""
    if after_list < len(tokens) and tokens[after_list].text == "(":
        return after_list, _closing(tokens, after_list)
    closing = keyword_at - 1
    depth = 0
    for at in range(closing, -1, -1):
        depth += (tokens[at].text == ")") - (tokens[at].text == "(")
        if depth == 0:
            return at, closing
    raise ValueError("by/without follows no aggregation")


def _identifier(tokens: list[Token], at: int, walk: _Walk) -> int:
    """Consume the identifier at `at` (a keyword, function or metric); the next index."""
    word, following = tokens[at].text, tokens[at + 1].text.lower() if at + 1 < len(tokens) else ""
    lowered = word.lower()  # PromQL keywords and aggregations ignore case; functions do not
    if lowered in LABEL_LIST_KEYWORDS:
        labels, after = _label_list(tokens, at + 1)
        scope = (
            _scope_of_by(tokens, at, after) if lowered in {"by", "without"} else (0, len(tokens))
        )
        walk.label_lists.append((labels, *scope))
        return after
    if lowered in KEYWORDS or (lowered in AGGREGATIONS and following in {"by", "without"}):
        return at + 1
    if following == "(":
        if word not in FUNCTIONS and lowered not in AGGREGATIONS:
            raise ValueError(f"{word}() is not a PromQL function")
        return at + 1
    if following == "{":
        labels, _, after = _matchers(tokens, at + 1)
        walk.selectors.append((at, Selector(word, labels)))
        return after
    walk.selectors.append((at, Selector(word, frozenset())))
    return at + 1


def extract(expr: str) -> QueryRefs:
    """The series selectors and label lists of one PromQL expression.

    Raises:
        ValueError: the expression does not tokenize, or a selector names no metric.
    """
    tokens, walk, at = tokenize(expr), _Walk([], []), 0
    while at < len(tokens):
        token = tokens[at]
        if token.text == "[":
            at = _closing(tokens, at) + 1
        elif token.text == "{":
            labels, name, after = _matchers(tokens, at)
            if name is None:
                raise ValueError(f"a selector with no metric name in {expr!r}")
            walk.selectors.append((at, Selector(name, labels)))
            at = after
        elif token.kind == "ident":
            at = _identifier(tokens, at, walk)
        else:
            at += 1
    return _refs(walk)


def _refs(walk: _Walk) -> QueryRefs:
    groupings = tuple(
        Grouping(labels, frozenset(s.metric for at, s in walk.selectors if start <= at <= end))
        for labels, start, end in walk.label_lists
    )
    return QueryRefs(tuple(s for _, s in walk.selectors), groupings)


# --- what the service exports ----------------------------------------------------


class _RecordingRegistry(CollectorRegistry):
    """A registry that remembers its collectors, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)


def _unread(*_: object) -> Any:
    raise AssertionError("describe() must name the series without reading the callbacks")


def _watch_everything(metrics: Metrics) -> None:
    """Call every `watch_*` method, so the series read at scrape time are registered too."""
    for name, method in inspect.getmembers(metrics, inspect.ismethod):
        if name.startswith("watch_"):
            method(**{param: _unread for param in inspect.signature(method).parameters})


def _label_names(collector: Collector, family: Metric) -> frozenset[str]:
    # prometheus_client keeps label names on the Counter/Gauge/Histogram object for
    # its own metrics, and on the family for custom collectors; neither is public API.
    source = collector if isinstance(collector, MetricWrapperBase) else family
    names: tuple[str, ...] | None = getattr(source, "_labelnames", None)
    assert names is not None, f"cannot tell the label names of {family.name}"
    return frozenset(names)


def _families(collector: Collector) -> list[Metric]:
    describe = getattr(collector, "describe", None)
    assert describe is not None, f"{collector!r} needs describe(): names without a scrape"
    return list(describe())


def exported_series(metrics: Metrics, registry: _RecordingRegistry) -> dict[str, frozenset[str]]:
    """Every series name `metrics` exports, with its label names."""
    _watch_everything(metrics)
    series: dict[str, frozenset[str]] = {}
    for collector in registry.collectors:
        for family in _families(collector):
            labels = _label_names(collector, family)
            for suffix in SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    registry = _RecordingRegistry()
    return exported_series(Metrics(registry), registry)


# --- the dashboard ---------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_]\w*)\)$")


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, QueryRefs]]:
    """(where, what it refers to) for every panel target and every query variable."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", extract(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", _label_values(_variable_query(variable))


def _label_values(query: str) -> QueryRefs:
    """`label_values(selector, label)`, Grafana's variable query: the label must be on it."""
    match = LABEL_VALUES.match(query.strip())
    assert match, f"{query!r}: expected label_values(metric{{...}}, label)"
    refs = extract(match["selector"])
    grouping = Grouping(frozenset({match["label"]}), frozenset(refs.metrics))
    return QueryRefs(refs.selectors, (*refs.groupings, grouping))


def problems(refs: QueryRefs, exported: dict[str, frozenset[str]]) -> list[str]:
    """What in `refs` the service does not export (empty when all is well)."""
    found = []
    for selector in refs.selectors:
        if selector.metric not in exported:
            near = difflib.get_close_matches(selector.metric, exported, n=1)
            hint = f" (closest: {near[0]})" if near else ""
            found.append(f"{selector.metric} is not exported{hint}")
        else:
            found += _missing_labels(selector.labels, {selector.metric}, exported)
    for grouping in refs.groupings:
        found += _missing_labels(grouping.labels, grouping.metrics & exported.keys(), exported)
    return found


def _missing_labels(
    labels: frozenset[str], metrics: set[str] | frozenset[str], exported: dict[str, frozenset[str]]
) -> list[str]:
    return [
        f"{metric} has no label {label!r} (it has {sorted(exported[metric])})"
        for metric in sorted(metrics)
        for label in sorted(labels - TARGET_LABELS - exported[metric])
    ]


def dashboard_problems(dashboard: dict[str, Any], exported: dict[str, frozenset[str]]) -> list[str]:
    found = (
        f"{where}: {p}" for where, refs in queries(dashboard) for p in problems(refs, exported)
    )
    return list(dict.fromkeys(found))


# --- tests: the extractor ----------------------------------------------------------


def test_the_extractor_finds_metrics_not_functions_labels_strings_or_ranges() -> None:
    refs = extract(
        "histogram_quantile(0.95, sum by (le, rpc) (rate("
        'semcache_request_duration_seconds_bucket{job=~"$job", cache!="none"}[$__rate_interval])))'
    )
    assert refs.selectors == (
        Selector("semcache_request_duration_seconds_bucket", frozenset({"job", "cache"})),
    )
    assert refs.groupings == (
        Grouping(frozenset({"le", "rpc"}), frozenset({"semcache_request_duration_seconds_bucket"})),
    )


def test_the_extractor_scopes_by_to_its_own_aggregation() -> None:
    refs = extract(
        "sum by (tenant) (rate(a_total[5m]))"
        " / on(tenant) sum(rate(b_total{x='rate(c)'}[1h:5m])) by (tenant, model)"
    )
    assert refs.metrics == {"a_total", "b_total"}
    assert Grouping(frozenset({"tenant"}), frozenset({"a_total"})) in refs.groupings
    assert Grouping(frozenset({"tenant", "model"}), frozenset({"b_total"})) in refs.groupings
    assert Grouping(frozenset({"tenant"}), frozenset({"a_total", "b_total"})) in refs.groupings


def test_the_extractor_skips_keywords_numbers_durations_and_variables() -> None:
    refs = extract(
        "up offset 5m > bool 1e3 and ignoring(instance) x unless y or topk(5, z) * 0x1F"
        " + Inf - NaN + vector(1) * ${__range_s} @ start()"
    )
    assert refs.metrics == {"up", "x", "y", "z"}
    assert extract('{__name__="semcache_rpcs_in_flight", job="a"}').selectors == (
        Selector("semcache_rpcs_in_flight", frozenset({"job"})),
    )


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("rat(x[5m])", "rat() is not a PromQL function"),
        ('sum(rate({job="a"}[5m]))', "a selector with no metric name"),
        ("sum by tenant (x)", "a label list must follow"),
        ("x{job=a}", "bad matcher at 'job'"),
        ("x # y", "cannot tokenize '# y'"),
    ],
)
def test_the_extractor_rejects_what_it_cannot_read(expr: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        extract(expr)


# --- tests: what the service exports ------------------------------------------------


def test_the_export_model_names_what_a_scrape_shows(exported: dict[str, frozenset[str]]) -> None:
    """The suffixes and labels above are what prometheus_client really writes."""
    metrics = Metrics()
    metrics.observe_request("Complete", "OK", "miss", "m", 0.2)
    metrics.record_usage("t", "m", 3, 4, 0.01, saved=True)
    metrics.watch_providers(lambda: {"p": "open"}, lambda: {"p": 2})
    metrics.watch_hit_rates(lambda: {"t": (1, 2)})
    metrics.watch_store(lambda: True, lambda: 0)
    text = generate_latest(metrics.registry).decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    names = {s.name for s in samples}
    assert {"semcache_requests_total", "semcache_request_duration_seconds_bucket"} <= names
    assert {"semcache_circuit_breaker_state", "semcache_store_writable"} <= names
    for sample in samples:
        assert sample.name in exported, sample.name
        assert set(sample.labels) <= exported[sample.name], sample


def test_the_export_model_covers_the_series_read_at_scrape_time(
    exported: dict[str, frozenset[str]],
) -> None:
    assert exported["semcache_circuit_breaker_state"] == {"provider"}
    assert exported["semcache_store_writable"] == frozenset()
    assert exported["semcache_requests_total"] == {"rpc", "code", "cache", "model"}
    assert exported["semcache_stage_duration_seconds_bucket"] == {"stage", "le"}
    assert "semcache_requests" not in exported


# --- tests: the dashboard -----------------------------------------------------------


def test_every_query_uses_exported_series_and_labels(exported: dict[str, frozenset[str]]) -> None:
    found = dashboard_problems(_dashboard(), exported)
    assert not found, "\n".join(found)


def test_a_renamed_metric_or_label_in_the_dashboard_is_caught(
    exported: dict[str, frozenset[str]],
) -> None:
    text = DASHBOARD.read_text()
    assert "semcache_saved_usd_total" in text and "by (tenant, detail)" in text
    renamed = json.loads(text.replace("semcache_saved_usd_total", "semcache_saved_dollars_total"))
    assert any(
        "semcache_saved_dollars_total is not exported" in p
        for p in dashboard_problems(renamed, exported)
    )
    relabelled = json.loads(text.replace("by (tenant, detail)", "by (tenant, reason)"))
    assert any("no label 'reason'" in p for p in dashboard_problems(relabelled, exported))


def test_a_metric_renamed_in_the_service_is_caught(exported: dict[str, frozenset[str]]) -> None:
    """As if service/metrics.py had renamed semcache_cache_lookups to something else."""
    renamed = {k: v for k, v in exported.items() if not k.startswith("semcache_cache_lookups")}
    found = dashboard_problems(_dashboard(), renamed)
    assert found and all("semcache_cache_lookups_total is not exported" in p for p in found)


def test_the_dashboard_has_every_row() -> None:
    rows = [p["title"] for p in _dashboard()["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_the_dashboard_is_an_importable_grafana_model() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.4+; 10.x writes 37 to 39
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["tenant"]["type"] == "query"
    assert _variable_query(variables["tenant"]).startswith("label_values(")


def test_every_panel_has_a_place_a_datasource_and_queries() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        _check_grid_pos(panel)
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        targets = panel["targets"]
        assert targets and all(t["expr"].strip() for t in targets), panel["title"]
        assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in targets), panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]


def _check_grid_pos(panel: dict[str, Any]) -> None:
    grid = panel["gridPos"]
    assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
    assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_variables_filter_every_query(exported: dict[str, frozenset[str]]) -> None:
    """Each selector keeps to the chosen jobs, and to the chosen tenants where it can."""
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            for selector in extract(target["expr"]).selectors:
                assert "job" in selector.labels, f"{panel['title']!r}: {selector.metric}"
                if "tenant" in exported.get(selector.metric, ()):
                    assert "tenant" in selector.labels, f"{panel['title']!r}: {selector.metric}"


def test_request_panels_leave_the_probes_out() -> None:
    """Found from outside: health checks (a probe every few seconds per pod) counted in
    the requests-per-second and error-ratio panels."""
    exprs = re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', DASHBOARD.read_text())
    requests = [e for e in exprs if "semcache_requests_total" in e and 'cache!=\\"none\\"' not in e]
    assert requests
    for expr in requests:
        selectors = re.findall(r"semcache_requests_total\{([^}]*)\}", expr)
        assert all("Check|Watch|ServerReflectionInfo" in s for s in selectors), expr
