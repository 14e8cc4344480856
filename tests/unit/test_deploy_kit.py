"""The deployment kit under deploy/: every file parses and agrees with the daemon.

PyYAML is not a dependency of coalmine, so YAML is read by ``_YamlLite`` below, a strict
parser for the block-style subset the kit is written in: mappings, sequences, plain and
quoted scalars, ``|`` block scalars, ``{}`` and ``[]``. A file outside that subset (flow
collections, anchors, folded or multi-line plain scalars) fails the test instead of passing
unchecked.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from coalmine.cli import main
from coalmine.config.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
IMAGE = "coalmine:0.1.0"
SERVICE_URL = "http://coalmine.coalmine.svc:9464"

METRICS = {
    "coalmine_events_consumed_total",
    "coalmine_invalid_events_total",
    "coalmine_verdicts_total",
    "coalmine_active_deployments",
    "coalmine_dropped_samples_total",
    "coalmine_ignored_events_total",
    "coalmine_ended_deployments_total",
    "coalmine_publish_failures_total",
    "coalmine_ready",
    "coalmine_consumer_lag",
    "coalmine_limit_exceeded_total",
    "coalmine_recovered_deployments_total",
    "coalmine_config_reloads_total",
}
HISTOGRAMS = {
    "coalmine_analysis_duration_seconds",
    "coalmine_publish_duration_seconds",
    "coalmine_verdict_lag_seconds",
}


# --------------------------------------------------------------------------- YAML subset


class YamlLiteError(ValueError):
    """A file uses YAML outside the subset, or is not well formed."""


_KEY = re.compile(
    r"""^(?P<key>"[^"]*"|'[^']*'|[^\s"'#{}\[\]&*!|>%@`-][^:]*?|-[^\s:][^:]*?)"""
    r"""\s*:(?:\s+(?P<rest>.*))?$"""
)
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?")


def _strip_comment(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote and text[i - 1] != "\\" else quote
        elif ch in "\"'" and (i == 0 or text[i - 1] == " "):
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text


def _is_item(content: str) -> bool:
    return content == "-" or content.startswith("- ")


class _YamlLite:
    def __init__(self, text: str, name: str) -> None:
        self.lines = text.split("\n")
        self.name = name
        self.i = 0

    def fail(self, message: str) -> YamlLiteError:
        return YamlLiteError(f"{self.name}:{self.i + 1}: {message}")

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            content = _strip_comment(raw.strip())
            if content:
                indent = len(raw) - len(raw.lstrip(" "))
                if raw[indent] == "\t":
                    raise self.fail("tab in indentation")
                return indent, content
            self.i += 1
        return None

    def node(self, parent: int) -> Any:
        nxt = self.peek()
        if nxt is None or nxt[0] <= parent:
            return None
        return self.seq(nxt[0]) if _is_item(nxt[1]) else self.map(nxt[0])

    def seq(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (nxt := self.peek()) and nxt[0] == indent and _is_item(nxt[1]):
            rest = nxt[1][1:].lstrip()
            if rest and (_is_item(rest) or _KEY.match(rest)):
                # "- key: v" or "- - v": the rest is a node that starts one column in.
                self.lines[self.i] = " " * (indent + len(nxt[1]) - len(rest)) + rest
                items.append(self.node(indent))
            else:
                self.i += 1
                items.append(self.value(rest, indent) if rest else self.node(indent))
        # A key at this indent is the parent mapping's next one ("key:" then "- item").
        return self.end(indent, items, more=lambda content: not _is_item(content))

    def map(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (nxt := self.peek()) and nxt[0] == indent and not _is_item(nxt[1]):
            match = _KEY.match(nxt[1])
            if not match:
                raise self.fail(f"expected 'key: value', got {nxt[1]!r}")
            key = self.scalar(match["key"])
            if not isinstance(key, str) or key in out:
                raise self.fail(f"bad or duplicate key {key!r}")
            self.i += 1
            if match["rest"]:
                out[key] = self.value(match["rest"], indent)
            elif (after := self.peek()) and after[0] == indent and _is_item(after[1]):
                out[key] = self.seq(indent)
            else:
                out[key] = self.node(indent)
        return self.end(indent, out)

    def end(self, indent: int, value: Any, more: Callable[[str], bool] = lambda _: False) -> Any:
        nxt = self.peek()
        if nxt and (nxt[0] > indent or (nxt[0] == indent and not more(nxt[1]))):
            raise self.fail(f"unexpected {nxt[1]!r} (indentation, or a multi-line scalar)")
        return value

    def value(self, text: str, indent: int) -> Any:
        if text not in {"|", "|-"}:
            return self.scalar(text)
        block: list[str] = []
        while self.i < len(self.lines):
            raw = self.lines[self.i]
            if raw.strip() and len(raw) - len(raw.lstrip(" ")) <= indent:
                break
            block.append(raw)
            self.i += 1
        while block and not block[-1].strip():
            block.pop()
        if not block:
            raise self.fail("empty block scalar")
        cut = min(len(line) - len(line.lstrip(" ")) for line in block if line.strip())
        body = "\n".join(line[cut:] for line in block)
        return body if text == "|-" else body + "\n"

    def scalar(self, text: str) -> Any:
        if text.startswith('"'):
            try:
                return json.loads(text)
            except ValueError:
                raise self.fail(f"bad double-quoted scalar {text}") from None
        if text.startswith("'"):
            if len(text) < 2 or not text.endswith("'") or "'" in text[1:-1].replace("''", ""):
                raise self.fail(f"bad single-quoted scalar {text}")
            return text[1:-1].replace("''", "'")
        if text in {"{}", "[]"}:
            return {} if text == "{}" else []
        if text[0] in "{[&*!%@`|>?" or ": " in text or text.endswith(":"):
            raise self.fail(f"outside the subset (flow, anchor, tag, or quote it): {text}")
        scalars = {"true": True, "false": False, "null": None, "~": None}
        if text in scalars:
            return scalars[text]
        if _INT.fullmatch(text):
            return int(text)
        return float(text) if _FLOAT.fullmatch(text) else text


def load_yaml(path: Path) -> list[Any]:
    """Every non-empty document of a YAML file of the kit."""
    docs = []
    text = path.read_text(encoding="utf-8")
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for n, chunk in enumerate(re.split(r"(?m)^---[ \t]*$", text)):
        parser = _YamlLite(chunk, f"{where} (document {n + 1})")
        doc = parser.node(-1)
        if parser.peek() is not None:
            raise parser.fail("content after the document")
        if doc is not None:
            docs.append(doc)
    return docs


def test_yaml_lite_reads_the_subset_and_refuses_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "a: 1  # c\nb:\n  - - x: 'it''s'\n      y: \"q\"\n  - {}\nc: |\n  k = 1\n\n  # kept\n"
        "d:\n- 2.5\nf: -1\n---\ne: true\n"
    )
    assert load_yaml(path) == [
        {
            "a": 1,
            "b": [[{"x": "it's", "y": "q"}], {}],
            "c": "k = 1\n\n# kept\n",
            "d": [2.5],
            "f": -1,
        },
        {"e": True},
    ]
    for bad in (
        "a: {b: 1}\n",
        "a: x: y\n",
        "a: 1\na: 2\n",
        "a: 1\n  b: 2\n",
        "a: 1\n- 2\n",
        "a: *x\n",
    ):
        path.write_text(bad)
        with pytest.raises(YamlLiteError):
            load_yaml(path)


# --------------------------------------------------------------------------- the kit


def _docs(relative: str) -> list[Any]:
    return load_yaml(DEPLOY / relative)


def _one(relative: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(relative) if d.get("kind") == kind]
    return doc


def _containers(doc: Any) -> list[dict[str, Any]]:
    """Every container spec (a mapping with ``image``) anywhere in a document."""
    if isinstance(doc, list):
        return [c for item in doc for c in _containers(item)]
    if not isinstance(doc, dict):
        return []
    found = [doc] if isinstance(doc.get("image"), str) else []
    return found + [c for value in doc.values() for c in _containers(value)]


@pytest.mark.parametrize("path", YAML_FILES + JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_file_parses(path: Path) -> None:
    docs = [orjson.loads(path.read_bytes())] if path.suffix == ".json" else load_yaml(path)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict)
        if "apiVersion" in doc and doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _docs("kubernetes/kustomization.yaml")
    present = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(present)


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    last: dict[str, str] = {}
    copies = []
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        last[word] = rest
        if word == "COPY" and not rest.startswith("--from"):
            copies.extend(rest.split()[:-1])
    assert re.match(r"python:3\.11-slim\b", last["FROM"])
    assert json.loads(last["ENTRYPOINT"]) == ["coalmine"]
    assert json.loads(last["CMD"]) == ["run", "--config", "/etc/coalmine/coalmine.toml"]
    assert last["EXPOSE"] == "9464"
    assert last["USER"].split(":")[0] not in {"0", "root"}
    assert "COALMINE_HTTP__HOST=0.0.0.0" in text
    assert all((ROOT / source).exists() for source in copies), copies
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["coalmine"] == "coalmine.cli:main"


def _daemon_paths() -> set[str]:
    """String constants that look like URL paths in the daemon's modules."""
    paths = set()
    for module in (ROOT / "coalmine" / "daemon").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                paths.add(node.value)
    return {p for p in paths if p.startswith("/")}


def test_probes_and_scrape_use_the_daemons_routes() -> None:
    workload = _one("kubernetes/deployment.yaml", "StatefulSet")
    spec = workload["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"] == ["run", "--config", "/etc/coalmine/coalmine.toml"]
    assert container["ports"] == [{"name": "http", "containerPort": 9464}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/livez", "/readyz")
    assert live["port"] == ready["port"] == "http"
    (endpoint,) = _one("kubernetes/podmonitor.yaml", "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    (port,) = _one("kubernetes/service.yaml", "Service")["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 9464, "http")
    assert {"/livez", "/readyz", "/metrics"} <= _daemon_paths()


def _environ(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The COALMINE_* environment a container gets, with stand-ins for pod fields and secrets."""
    environ = {}
    for source in container.get("envFrom", []):
        environ.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        environ[var["name"]] = var.get("value", "coalmine-0" if "fieldRef" in ref else "secret")
    return {k: v for k, v in environ.items() if k.startswith("COALMINE_")}


def test_configmap_toml_and_environment_load(tmp_path: Path) -> None:
    config_map = _one("kubernetes/configmap.yaml", "ConfigMap")
    path = tmp_path / "coalmine.toml"
    path.write_text(config_map["data"]["coalmine.toml"], encoding="utf-8")
    (container,) = _containers(_one("kubernetes/deployment.yaml", "StatefulSet"))
    settings = load_settings(path, environ=_environ(container, {}))
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9464)  # noqa: S104
    assert settings.kafka.group_instance_id == "coalmine-0"
    assert settings.kafka.sasl_password is not None
    assert settings.http.api_token is not None


def test_pipeline_containers_call_coalmine_through_the_entrypoint() -> None:
    config_maps = {
        d["metadata"]["name"]: d["data"]
        for d in _docs("argo-workflows/canary-workflow.yaml")
        if d["kind"] == "ConfigMap"
    }
    containers = [
        c
        for relative in (
            "argo-workflows/canary-workflow.yaml",
            "argo-rollouts/analysis-template.yaml",
        )
        for c in _containers(_docs(relative))
        if c["image"] == IMAGE
    ]
    assert {c["args"][0] for c in containers} == {"start", "wait", "finish"}
    for container in containers:
        _parse_cli(container["args"])
        settings = load_settings(None, environ=_environ(container, config_maps))
        assert settings.kafka.security_protocol == "SASL_SSL"
    (workflow,) = _docs("github-actions/canary.yml")
    scripts = "\n".join(s.get("run", "") for s in workflow["jobs"]["canary"]["steps"])
    scripts = re.sub(r"\$\{\{[^}]*\}\}", "x", scripts.replace("\\\n", " "))
    calls = [shlex.split(line)[1:] for line in scripts.splitlines() if line.startswith("coalmine ")]
    assert [args[0] for args in calls] == ["start", "wait", "finish"]
    for args in calls:
        _parse_cli(args)
    assert all(f"{code}) decision=" in scripts for code in (0, 1, 3, 4))


def _parse_cli(args: list[str]) -> None:
    """Parse a command line of the kit with the real CLI (raises on a bad option)."""
    main.commands[args[0]].make_context(args[0], args[1:])


def test_argo_rollouts_and_flagger_use_the_api() -> None:
    template = next(
        d
        for d in _docs("argo-rollouts/analysis-template.yaml")
        if d["metadata"]["name"] == "coalmine-verdict"
    )
    (metric,) = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["url"] == f"{SERVICE_URL}/api/v1/services/{{{{args.service}}}}"
    assert web["jsonPath"] == "{$.decision}"
    assert web["headers"] == [{"key": "Authorization", "value": "Bearer {{args.api-token}}"}]
    assert metric["successCondition"] == 'result == "promote"'
    assert metric["failureCondition"] == 'result == "rollback"'
    assert metric["interval"] == "30s"
    hooks = _one("flagger/canary.yaml", "Canary")["spec"]["analysis"]["webhooks"]
    assert {(h["type"], h["url"]) for h in hooks} == {
        ("confirm-promotion", f"{SERVICE_URL}/api/v1/gates/promote"),
        ("rollback", f"{SERVICE_URL}/api/v1/gates/rollback"),
    }
    assert all(h["metadata"]["service"] for h in hooks)


def test_systemd_unit() -> None:
    lines = (DEPLOY / "systemd" / "coalmine.service").read_text(encoding="utf-8").splitlines()
    unit = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    assert unit["Type"] == "simple"
    assert unit["ExecStart"] == "/usr/local/bin/coalmine run --config /etc/coalmine/coalmine.toml"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert unit["Restart"] == "on-failure"
    assert unit["EnvironmentFile"] == "-/etc/coalmine/env"
    assert unit["ProtectSystem"] == "strict"
    assert unit["NoNewPrivileges"] == "yes"


def _metric_names(exprs: list[str]) -> set[str]:
    names = set()
    for expr in exprs:
        for name in re.findall(r"\bcoalmine_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            names.add(base if base in HISTOGRAMS else name)
    return names


def test_dashboard_and_alerts_use_known_metrics() -> None:
    dashboard = orjson.loads((DEPLOY / "grafana" / "coalmine-dashboard.json").read_bytes())
    assert dashboard["schemaVersion"] >= 39
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    panel_exprs = [t["expr"] for p in panels for t in p["targets"]]
    (rules_file,) = _docs("prometheus/coalmine-alerts.yaml")
    rules = [r for group in rules_file["groups"] for r in group["rules"]]
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
    used = _metric_names(panel_exprs) | _metric_names([r["expr"] for r in rules])
    assert used == METRICS | HISTOGRAMS, used ^ (METRICS | HISTOGRAMS)
