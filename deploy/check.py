#!/usr/bin/env python3
"""Lints the deployment artefacts without a container engine or cluster (run by .ci/run).

- every YAML file under deploy/ parses (all documents);
- compose.yaml: every igl service runs a real `igl` subcommand, has a health check (or
  is a one-shot job), reads an existing config file, and depends only on defined services;
- k8s: every Deployment has liveness and readiness probes on /healthz and /readyz (the
  channel endpoint: /healthz), resource requests, a non-root security context, config
  from the ConfigMap and secrets from a Secret defined in the manifests; every igl
  component of the node has exactly one Deployment, and every API a Service;
- the Dockerfile builds with --locked, runs as a non-root user and has a HEALTHCHECK.

Exits 1 listing every problem found.
"""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
COMPONENTS = [
    "message-api", "document-api", "subscriptions-api", "message-rx-api",
    "message-processor", "router", "channel-poller", "channel-subscriber", "retriever",
    "object-spider", "spreader", "deliverer",
]
APIS = ["message-api", "document-api", "subscriptions-api", "message-rx-api"]
problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def load_all(path):
    try:
        return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    except yaml.YAMLError as error:
        problem(path.relative_to(REPO), f"does not parse: {error}")
        return []


def check_compose(path):
    [compose] = load_all(path) or [None]
    if compose is None:
        return
    services = compose.get("services", {})
    for name, service in services.items():
        where = f"{path.relative_to(REPO)} service {name}"
        for dependency in service.get("depends_on", {}):
            if dependency not in services:
                problem(where, f"depends on undefined service {dependency}")
        if service.get("image") != "igl:latest":
            continue
        command = service.get("command", [])
        if not command or command[0] not in ("node", "migrate", "channel"):
            problem(where, f"unexpected igl command {command}")
        if command and command[0] == "node":
            if "--component=admin-api" not in command:
                problem(where, "runs no admin-api (no /healthz for its health check)")
        health = service.get("healthcheck", {})
        if command and command[0] != "migrate" and not health.get("test"):
            problem(where, "has no health check")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and not (path.parent / source).exists():
                problem(where, f"mounts missing file {source}")
    for jurisdiction in ("au", "sg"):
        for component in COMPONENTS:
            if f"{jurisdiction}-{component}" not in services:
                problem(path.relative_to(REPO), f"no service {jurisdiction}-{component}")


def check_k8s(directory):
    documents = []
    for path in sorted(directory.glob("*.yaml")):
        documents += [(path, doc) for doc in load_all(path)]
    kinds = {}
    for path, doc in documents:
        kinds.setdefault(doc.get("kind"), []).append((path, doc))
    secrets = {doc["metadata"]["name"] for _, doc in kinds.get("Secret", [])}
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    config_maps = {generated["name"] for generated in kustomization.get("configMapGenerator", [])}
    for resource in kustomization.get("resources", []):
        if not (directory / resource).exists():
            problem(directory.relative_to(REPO), f"kustomization lists missing {resource}")
    for generated in kustomization.get("configMapGenerator", []):
        for file in generated.get("files", []):
            if not (directory / file).exists():
                problem(directory.relative_to(REPO), f"configMapGenerator file {file} is missing")
    deployed = []
    for path, doc in kinds.get("Deployment", []) + kinds.get("Job", []):
        name = doc["metadata"]["name"]
        where = f"{path.relative_to(REPO)} {doc['kind']} {name}"
        pod = doc["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problem(where, "does not set runAsNonRoot")
        for volume in pod.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                problem(where, f"mounts unknown ConfigMap {volume['configMap']['name']}")
        for container in pod["containers"]:
            if not container.get("resources", {}).get("requests"):
                problem(where, "has no resource requests")
            for source in container.get("envFrom", []):
                if source["secretRef"]["name"] not in secrets:
                    problem(where, f"reads undefined Secret {source['secretRef']['name']}")
            if doc["kind"] != "Deployment":
                continue
            args = container.get("args", [])
            liveness = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
            readiness = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
            if args and args[0] == "node":
                components = [arg.split("=", 1)[1] for arg in args if arg.startswith("--component=")]
                deployed += [c for c in components if c != "admin-api"]
                if "admin-api" not in components:
                    problem(where, "runs no admin-api (no probes)")
                if (liveness, readiness) != ("/healthz", "/readyz"):
                    problem(where, f"probes are {liveness}, {readiness}; expected /healthz, /readyz")
            elif liveness != "/healthz":
                problem(where, "has no /healthz liveness probe")
    for component in COMPONENTS:
        count = deployed.count(component)
        if count != 1:
            problem(directory.relative_to(REPO), f"{count} Deployments run {component}, expected 1")
    services = {doc["metadata"]["name"] for _, doc in kinds.get("Service", [])}
    for api in APIS:
        if f"igl-{api}" not in services:
            problem(directory.relative_to(REPO), f"no Service igl-{api}")


def check_dockerfile(path):
    text = path.read_text()
    where = path.relative_to(REPO)
    if "--locked" not in text:
        problem(where, "cargo build without --locked")
    if not re.search(r"^USER\s+(?!root|0\b)\S+", text, re.MULTILINE):
        problem(where, "runs as root (no non-root USER)")
    if "HEALTHCHECK" not in text or "/healthz" not in text:
        problem(where, "has no HEALTHCHECK on /healthz")
    if not re.search(r"^FROM rust:1\.95", text, re.MULTILINE) and "RUST_VERSION=1.95" not in text:
        problem(where, "builder is not the rust 1.95 image")


for path in sorted(ROOT.rglob("*.yaml")) + sorted(ROOT.rglob("*.yml")):
    load_all(path)
check_compose(ROOT / "compose.yaml")
check_k8s(ROOT / "k8s")
check_dockerfile(REPO / "Dockerfile")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("deploy artefacts: yaml parses, compose and k8s checks pass")
