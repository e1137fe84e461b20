"""deploy/: the container file, the Kubernetes manifests and the HAProxy examples, checked offline by the tools
their users run (hadolint, kubernetes-validate --strict, haproxy -c) and against each other: the config in the
ConfigMap passes `ftp-alg check`, each pod's passive slice is the one the balancer sends to it, probes and
grace periods fit the gateway's settings. Each tool is also shown a broken file, so a test cannot pass because
the tool checks nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import external_tool

from alg import __version__, cli
from alg.gateway.instance import for_instance
from alg.ops.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "Containerfile"
K8S = DEPLOY / "kubernetes"
HAPROXY_EXAMPLE = DEPLOY / "haproxy" / "haproxy.cfg"
K8S_VERSION = "1.30.0"


def tool(name: str) -> str:
    return external_tool(name, "./dev test installs it")


def run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=cwd)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in {K8S}")


def configmap_file(name: str, key: str, tmp_path: Path) -> Path:
    path = tmp_path / key
    path.write_text(manifest("ConfigMap", name)["data"][key])
    return path


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def haproxy_slices(config: str) -> dict[str, tuple[int, int]]:
    """Data port range -> server name, from each `frontend ftp_data_*` bind and its backend's server."""
    binds = dict(re.findall(r"frontend (ftp_data_\w+)\n\s+bind \S*:(\d+-\d+)", config))
    servers = dict(re.findall(r"backend (ftp_data_\w+)\n(?:\s+#.*\n)*\s+server (\w+) ", config))
    slices = {}
    for frontend, ports in binds.items():
        first, last = ports.split("-")
        slices[servers[frontend]] = (int(first), int(last))
    return slices


# ---- the container file ---------------------------------------------------------------------------------------


def test_containerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "--failure-threshold", "style", CONTAINERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_catches_a_bad_containerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python\nRUN pip install ftp-alg\nUSER root\n")
    result = run(tool("hadolint"), "--failure-threshold", "style", bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_containerfile_installs_a_wheel_runs_unprivileged_and_checks_health() -> None:
    lines = [line.strip() for line in CONTAINERFILE.read_text().splitlines()]
    text = "\n".join(lines)
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert "pip wheel" in text and "/wheels/ftp_alg-*.whl" in text
    assert not re.search(r"COPY .*site-packages", text)  # the package is installed, not copied in
    run_stage = "\n".join(lines[len(lines) - lines[::-1].index(stages[1]) :])
    assert "COPY alg" not in run_stage  # the source tree stays in the build stage
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "COPY --chmod=755 deploy/container-entrypoint.sh /usr/local/bin/ftp-alg-entrypoint" in text
    assert 'ENTRYPOINT ["/usr/local/bin/ftp-alg-entrypoint"]' in text


def test_every_file_the_containerfile_copies_from_the_checkout_exists() -> None:
    """A missing file fails `podman build`, which the suite cannot run (no base image offline)."""
    sources = []
    for line in CONTAINERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    assert "constraints.txt" in sources and "LICENSE" in sources
    assert [source for source in sources if not (ROOT / source).exists()] == []


def entrypoint(tmp_path: Path, *args: str, public: str | None) -> subprocess.CompletedProcess[str]:
    """deploy/container-entrypoint.sh as the image runs it, with a stand-in `ftp-alg` that shows what it got."""
    stand_in = tmp_path / "bin" / "ftp-alg"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text('#!/bin/sh\necho "ftp-alg $* public=${FTP_ALG_PUBLIC_ADDRESS:-}"\n')
    stand_in.chmod(0o755)
    env = {"PATH": f"{stand_in.parent}{os.pathsep}/usr/bin:/bin"}
    if public is not None:
        env["FTP_ALG_PUBLIC_ADDRESS"] = public
    script = DEPLOY / "container-entrypoint.sh"
    return subprocess.run(["sh", script, *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize("public", [None, ""])
def test_the_container_refuses_to_run_without_the_public_address_and_names_the_variable(
    tmp_path: Path, public: str | None
) -> None:
    refused = entrypoint(tmp_path, "run", "--config", "/etc/ftp-alg/gateway.yaml", public=public)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("ftp-alg: error: set FTP_ALG_PUBLIC_ADDRESS to the IP address FTP clients dial")
    assert len(refused.stderr.splitlines()) == 1


def test_the_container_runs_with_the_public_address_and_passes_other_commands_through(tmp_path: Path) -> None:
    config = ("--config", "/etc/ftp-alg/gateway.yaml")
    started = entrypoint(tmp_path, "run", *config, public="203.0.113.7")
    assert started.returncode == 0 and started.stdout == f"ftp-alg run {' '.join(config)} public=203.0.113.7\n"
    flag = entrypoint(tmp_path, "run", *config, "--public-address", "203.0.113.8", public=None)
    assert flag.returncode == 0 and "--public-address 203.0.113.8" in flag.stdout
    for command in (["sessions"], ["check", *config], ["--version"]):
        passed = entrypoint(tmp_path, *command, public=None)
        assert passed.returncode == 0 and passed.stdout == f"ftp-alg {' '.join(command)} public=\n"


def test_the_image_config_takes_its_public_address_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DEPLOY / "container-gateway.yaml"
    assert load_config(config).public_address is None  # nothing baked in: the entrypoint requires the variable
    monkeypatch.setenv("FTP_ALG_PUBLIC_ADDRESS", "203.0.113.7")
    assert cli.main(["check", "--config", str(config)]) == 0
    assert "public_address=203.0.113.7" in capsys.readouterr().out


def test_the_image_default_config_passes_check_and_serves_the_healthcheck_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = DEPLOY / "container-gateway.yaml"
    assert cli.main(["check", "--config", str(config)]) == 0
    settings = load_config(config)
    assert settings.metrics_listen is not None and settings.metrics_listen.port == 9121
    assert settings.listen[0].port >= 1024  # the image runs unprivileged, without CAP_NET_BIND_SERVICE
    assert "127.0.0.1:9121/healthz" in CONTAINERFILE.read_text()
    assert "ok: " in capsys.readouterr().out


def test_the_wheel_holds_the_package_and_its_entry_point(tmp_path: Path) -> None:
    # What the container's build stage does: a wheel from this checkout, with no network (--no-deps,
    # --no-build-isolation use what is installed here). -v shows setuptools' warnings: a deprecated setting
    # (as `license = { text = ... }` was) means the build stops working on the date the warning names.
    result = run(
        sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", tmp_path, ".", cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "deprecat" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    (wheel,) = tmp_path.glob("ftp_alg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "alg/cli.py" in names and "alg/gateway/registry.py" in names
    assert not any(name.startswith("tests/") for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "ftp-alg = alg.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    # PEP 639: the licence as an SPDX expression, and its text inside the wheel.
    metadata = zipfile.ZipFile(wheel).read(f"ftp_alg-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata and f"Version: {__version__}" in metadata
    assert f"ftp_alg-{__version__}.dist-info/licenses/LICENSE" in names


# ---- Kubernetes -----------------------------------------------------------------------------------------------


def test_manifests_pass_kubernetes_validate_strict() -> None:
    files = sorted(K8S.glob("*.yaml"))
    assert len(files) >= 4
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARN" not in result.stdout + result.stderr


def test_kubernetes_validate_catches_a_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    statefulset = manifest("StatefulSet", "ftp-alg")
    statefulset["spec"]["replica"] = statefulset["spec"].pop("replicas")  # a typo
    bad.write_text(yaml.safe_dump(statefulset))
    assert run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, bad).returncode != 0


def test_configmap_config_passes_check_and_each_pod_gets_the_slice_the_balancer_sends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configmap_file("ftp-alg-config", "gateway.yaml", tmp_path)
    statefulset = manifest("StatefulSet", "ftp-alg")
    replicas = statefulset["spec"]["replicas"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["FTP_ALG_INSTANCE"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert int(env["FTP_ALG_INSTANCES"]) == replicas
    # The public address: a required key (a pod without it is not started), not a value in the settings.
    public_ref = env["FTP_ALG_PUBLIC_ADDRESS"]["configMapKeyRef"]
    assert public_ref.get("optional") is False
    public = manifest("ConfigMap", public_ref["name"])["data"][public_ref["key"]]
    assert load_config(config).public_address is None
    monkeypatch.setenv("FTP_ALG_PUBLIC_ADDRESS", public)
    balancer = haproxy_slices(manifest("ConfigMap", "ftp-alg-balancer")["data"]["haproxy.cfg"])
    assert len(balancer) == replicas
    settings = load_config(config)
    for index in range(replicas):
        pod = f"{statefulset['metadata']['name']}-{index}"
        monkeypatch.setenv("FTP_ALG_INSTANCE", pod)
        monkeypatch.setenv("FTP_ALG_INSTANCES", env["FTP_ALG_INSTANCES"])
        assert cli.main(["check", "--config", str(config)]) == 0  # as the pod would start
        checked = capsys.readouterr().out
        assert "ok: mode=reverse" in checked and f"public_address={public}" in checked
        mine = for_instance(settings, {"FTP_ALG_INSTANCE": pod, "FTP_ALG_INSTANCES": str(replicas)}).passive_ports
        assert balancer[f"gw{index}"] == (mine.first, mine.last)
    service = manifest("Service", "ftp")
    published = {port["port"] for port in service["spec"]["ports"]}
    assert set(settings.passive_ports) <= published and 21 in published


def test_probes_grace_and_security_fit_the_gateway(tmp_path: Path) -> None:
    settings = load_config(configmap_file("ftp-alg-config", "gateway.yaml", tmp_path))
    spec = manifest("StatefulSet", "ftp-alg")["spec"]["template"]
    (container,) = spec["spec"]["containers"]
    metrics_port = settings.metrics_listen.port if settings.metrics_listen else None
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == metrics_port and ports["control"] == settings.listen[0].port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert spec["spec"]["terminationGracePeriodSeconds"] > settings.timeouts.shutdown_grace_s
    assert spec["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert spec["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert settings.admin.listen is not None and settings.admin.listen.ip.is_loopback
    assert manifest("Service", "ftp")["spec"]["externalTrafficPolicy"] == "Local"
    assert manifest("Service", "ftp")["spec"]["sessionAffinity"] == "ClientIP"
    assert settings.proxy_protocol is not None and settings.proxy_protocol.data_from == "balancer"
    assert manifest("Service", "ftp-alg-pods")["spec"]["publishNotReadyAddresses"] is True
    assert manifest("PodDisruptionBudget", "ftp-alg")["spec"]["maxUnavailable"] == 1


# ---- HAProxy --------------------------------------------------------------------------------------------------


def test_haproxy_configs_pass_haproxy_check(tmp_path: Path) -> None:
    haproxy = tool("haproxy")
    in_cluster = configmap_file("ftp-alg-balancer", "haproxy.cfg", tmp_path)
    for config in (HAPROXY_EXAMPLE, in_cluster):
        text = config.read_text()
        assert "send-proxy-v2" in text and "option httpchk GET /readyz" in text
        result = run(haproxy, "-c", "-f", config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Configuration file is valid" in result.stdout + result.stderr
    example = haproxy_slices(HAPROXY_EXAMPLE.read_text())
    assert example == haproxy_slices(in_cluster.read_text())


def test_haproxy_check_catches_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text(HAPROXY_EXAMPLE.read_text().replace("send-proxy-v2", "send-proxy-v9"))
    assert run(tool("haproxy"), "-c", "-f", bad).returncode != 0
