"""Cloud clusters and the image, checked offline: every launcher config against the cluster-config schema of the
installed Ray, the KubeRay manifests against the fields KubeRay requires, one set of versions across the Dockerfile,
the configs, the manifests and pyproject.toml, and every sweep command we ship against the sweep's own CLI."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = {p.stem: p for p in sorted((ROOT / "cluster").glob("*.yaml"))}
KUBERAY = {"RayCluster": ROOT / "cluster/kuberay/raycluster.yaml", "RayJob": ROOT / "cluster/kuberay/rayjob.yaml"}
IMAGE_HOME = "/home/ray/tavaal"  # WORKDIR of docker/Dockerfile: where the project lies in the image
SAMPLE_ENV = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "TAVAAL_STORAGE_PATH": "s3://bucket/sweeps"}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(name: str) -> str:
    """The exact version pyproject.toml pins for a dependency (``name[extras]==X``)."""
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{name}(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml does not pin {name} to one version")


def dockerfile() -> str:
    return (ROOT / "docker/Dockerfile").read_text()


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # the CRDs are 1 MB


def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())


def kuberay_images(spec: dict) -> list[str]:
    groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
    return [c["image"] for g in groups for c in g["template"]["spec"]["containers"]]


# --- one set of versions --------------------------------------------------------------------------------------------


def test_versions_agree_across_dockerfile_configs_manifests_and_pyproject():
    project = pyproject()
    tavaal = project["tool"]["tavaal"]
    ray_version, python = pinned("ray"), tavaal["python"]
    base = re.search(r"^FROM rayproject/ray:(\S+)$", dockerfile(), re.M).group(1)
    assert base == f"{ray_version}-py{python.replace('.', '')}-gpu"
    assert python in SpecifierSet(project["project"]["requires-python"])
    image = tavaal["image"]
    assert image.rsplit(":", 1)[1] == project["project"]["version"]  # the tag is the project version
    assert f"-t {image} ." in dockerfile()  # the build command in its header
    for dep in ("torch", "torchvision"):  # the image's torch satisfies the project's range
        got = re.search(rf"\b{dep}==([\w.]+)", dockerfile()).group(1)
        spec = next(d for d in project["project"]["dependencies"] if re.match(rf"{dep}\s*[<>=]", d))
        assert got in SpecifierSet(spec[len(dep) :]), (dep, got, spec)
    for name, path in LAUNCHER.items():
        assert load(path)["docker"]["image"] == image, name
    for kind, path in KUBERAY.items():
        doc = load(path)
        spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
        assert spec["rayVersion"] == ray_version, kind
        assert set(kuberay_images(spec)) == {image}, kind
    submitter = load(KUBERAY["RayJob"])["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert {c["image"] for c in submitter} == {image}
    readme = (ROOT / "docs/clusters.md").read_text()
    assert f"docker push {image}" in readme and f"-t {image} ." in readme


# --- Ray cluster launcher configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LAUNCHER))
def test_launcher_config_validates_against_the_installed_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(LAUNCHER[name])
    jsonschema.validate(config, ray_schema())
    # Ray's own path (`ray up` without the cloud calls): merged with its defaults.yaml, then validated.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    # Every omitted key would come from Ray's defaults: its setup commands pip-install a nightly Ray wheel.
    assert prepared["head_setup_commands"] == [] and prepared["worker_setup_commands"] == []
    head = config["head_node_type"]
    assert prepared["available_node_types"][head]["max_workers"] == 0
    workers = {k: v for k, v in config["available_node_types"].items() if k != head}
    assert workers and all(
        v["min_workers"] == 0 and 0 < v["max_workers"] <= config["max_workers"] for v in workers.values()
    ), "workers scale from zero, under the global ceiling"
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert config["docker"]["pull_before_run"] is True


def test_the_schema_check_catches_a_misspelled_key():
    config = load(LAUNCHER["aws-gpu"])
    config["idle_timeout_minute"] = config.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        jsonschema.validate(config, ray_schema())


@pytest.mark.parametrize("name", list(LAUNCHER))
def test_gpu_node_types_attach_the_gpus_they_advertise(name):
    config = load(LAUNCHER[name])
    gpu_types = {k: v for k, v in config["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}
    if name.endswith("-cpu-small"):
        assert not gpu_types and "--gpus all" not in str(config["docker"])
        return
    assert gpu_types and "--gpus all" in config["docker"]["worker_run_options"]
    for node_type in gpu_types.values():
        node, gpus = node_type["node_config"], node_type["resources"]["GPU"]
        if config["provider"]["type"] == "aws":
            assert re.match(r"(g\d|p\d)", node["InstanceType"]), node["InstanceType"]
        else:
            assert sum(a["acceleratorCount"] for a in node["guestAccelerators"]) == gpus
            assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"  # GCE refuses GPUs otherwise


@pytest.mark.parametrize("name", list(LAUNCHER))
def test_workers_get_bucket_access_without_secrets(name):
    config = load(LAUNCHER[name])
    head = config["head_node_type"]
    for key, node_type in config["available_node_types"].items():
        if key == head:
            continue  # `ray up` gives the head its own profile / service account
        node = node_type["node_config"]
        if config["provider"]["type"] == "aws":
            assert node["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
        else:
            email = node["serviceAccounts"][0]["email"]
            assert email == f"ray-autoscaler-sa-v1@{config['provider']['project_id']}.iam.gserviceaccount.com"


@pytest.mark.parametrize("name", list(LAUNCHER))
def test_launcher_config_turns_token_authentication_on_with_the_users_token(name):
    """Every container runs with RAY_AUTH_MODE=token and reads the token from ~/.ray/auth_token, which `ray up` copies
    from the user's machine; the job API listens on the head's loopback (reached through `ray dashboard`)."""
    from ray.autoscaler._private.docker import docker_start_cmds
    from ray.autoscaler.sdk import get_docker_host_mount_location

    config = load(LAUNCHER[name])
    docker = config["docker"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    host_copy = f"{get_docker_host_mount_location(config['cluster_name'])}/~/.ray/auth_token"
    for role in ("head", "worker"):
        # the `docker run` line Ray's launcher builds for this node type
        run = docker_start_cmds(
            "ubuntu",
            docker["image"],
            config["file_mounts"],
            docker["container_name"],
            docker["run_options"] + docker.get(f"{role}_run_options", []),
            config["cluster_name"],
            "/home/ray",
            "docker",
        )
        assert "--env RAY_AUTH_MODE=token" in run, role
        assert f"-v {host_copy}:/home/ray/.ray/auth_token" in run, role  # Ray's default token path in the image
    text = LAUNCHER[name].read_text()
    assert set(re.findall(r"RAY_AUTH_MODE=(\w+)", text)) == {"token"}
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert not any("RAY_AUTH" in c for c in starts)  # nothing turns it off, or names another token, per node
    head = next(c for c in config["head_start_ray_commands"] if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in head


def test_no_secrets_in_cluster_files():
    # a Ray token is 64 hex digits (`ray get-auth-token --generate`: secrets.token_hex(32))
    secret = re.compile(
        r"AKIA[0-9A-Z]{16}|PRIVATE KEY|(password|secret_access_key|token)\s*[:=]\s*\S"
        r"|\b[0-9a-f]{32,}\b",
        re.I,
    )
    files = [*LAUNCHER.values(), *KUBERAY.values(), ROOT / "docker/Dockerfile"]
    for path in files:
        assert not secret.search(path.read_text()), path
        body = "\n".join(
            line.split(" #")[0] for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        # No bucket and no tracking URI written in: only ${MLFLOW_TRACKING_URI...} references to the environment.
        assert not re.search(r"\b(s3|gs)://|MLFLOW_TRACKING_URI(?!(:\?[^}]*)?\})", body), path


# --- KubeRay manifests ----------------------------------------------------------------------------------------------
# Required fields: the union over the ray.io/v1 CRDs of KubeRay v1.1.0 .. v1.7.0; authOptions (token
# authentication) exists from v1.5.1, the oldest operator the manifests support
# (ray-operator/config/crd/bases/ray.io_rayclusters.yaml, ray.io_rayjobs.yaml: headGroupSpec; its rayStartParams and
# template; workerGroupSpecs[].groupName/minReplicas/maxReplicas/rayStartParams/template; containers[].name) and the
# operator's checks in ray-operator/controllers/ray/utils/validation.go (v1.7.0): at least one container per group,
# 0 <= minReplicas <= maxReplicas, names DNS-1035 labels of <= 53 (RayCluster) / 47 (RayJob) characters, a RayJob
# needs rayClusterSpec (or clusterSelector), ttlSecondsAfterFinished >= 0, activeDeadlineSeconds > 0.
# Set KUBERAY_CRD_DIR to a kuberay checkout's ray-operator/config/crd/bases to also check the full CRD schemas
# (v1.5.1 and v1.7.0 pass; v1.4.2 reports .spec.authOptions as unknown, as `kubectl apply --validate=strict` would).


def check_cluster_spec(spec: dict) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"])
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)) and "gpu" in names
    for group in spec["workerGroupSpecs"]:
        assert isinstance(group["rayStartParams"], dict) and group["template"]["spec"]["containers"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    for group in [head, *spec["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            assert c["name"] and c["image"]
            assert {"configMapRef": {"name": "tavaal-env"}} in c["envFrom"]
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0


@pytest.mark.parametrize("kind", list(KUBERAY))
def test_kuberay_manifest_has_the_fields_kuberay_requires(kind):
    doc = load(KUBERAY[kind])
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kind
    name = doc["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= (53 if kind == "RayCluster" else 47)
    if kind == "RayCluster":
        check_cluster_spec(doc["spec"])
        return
    spec = doc["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    assert spec["entrypoint"].startswith("python -m tavaal.sweep ")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"  # a Kubernetes Job's pod
    # KubeRay pastes the entrypoint into the submitter's `bash -c` line: a control operator would split it there.
    assert not re.search(r"[;&|<>`]", spec["entrypoint"])


@pytest.mark.parametrize("kind", list(KUBERAY))
def test_kuberay_manifest_turns_token_authentication_on_without_a_token(kind):
    """authOptions.mode=token (KubeRay >= 1.5.1, Ray >= 2.52): the operator makes the token's Secret and sets
    RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray container, the autoscaler and the submitter; the manifest sets
    neither itself (a value there would be a token in the file, or a second, conflicting setting)."""
    doc = load(KUBERAY[kind])
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    assert spec.get("authOptions") == {"mode": "token"}
    assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52, 0)  # the operator refuses token mode before
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    if kind == "RayJob":
        groups.append({"template": doc["spec"]["submitterPodTemplate"]})
    for group in groups:
        for c in group["template"]["spec"]["containers"]:
            assert not [e for e in c.get("env", []) if e["name"].startswith("RAY_AUTH")], c["name"]
    # an operator older than 1.5.1 would drop the unknown field and start the cluster open: strict refuses it
    assert f"kubectl apply --validate=strict -f cluster/kuberay/{KUBERAY[kind].name}" in KUBERAY[kind].read_text()


@pytest.mark.skipif(not os.environ.get("KUBERAY_CRD_DIR"), reason="set KUBERAY_CRD_DIR to kuberay's crd/bases")
@pytest.mark.parametrize("kind", list(KUBERAY))
def test_kuberay_manifest_against_the_crd_schema(kind):
    crd = load(Path(os.environ["KUBERAY_CRD_DIR"]) / f"ray.io_{kind.lower()}s.yaml")
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    doc = load(KUBERAY[kind])
    jsonschema.Draft7Validator(schema).validate(doc)
    assert unknown_fields(doc, schema) == []  # what `kubectl apply --validate=strict` refuses


def unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    if isinstance(doc, list):
        return [f for i, v in enumerate(doc) for f in unknown_fields(v, schema.get("items", {}), f"{path}[{i}]")]
    if not isinstance(doc, dict) or "properties" not in schema:
        return []
    props = schema["properties"]
    return [f"{path}.{k}" for k in doc if k not in props] + [
        f for k, v in doc.items() if k in props for f in unknown_fields(v, props[k], f"{path}.{k}")
    ]


# --- the sweep commands we ship, against the sweep's CLI ------------------------------------------------------------


def sweep_args(command: str) -> list[str]:
    """The arguments after ``python -m tavaal.sweep``, with $VAR / ${VAR:?msg} replaced by sample values."""
    command = re.sub(r"\$\{(\w+)(:\?[^}]*)?\}|\$(\w+)", lambda m: SAMPLE_ENV[m.group(1) or m.group(3)], command)
    words = shlex.split(command)
    i = words.index("tavaal.sweep")
    assert words[i - 2 : i] == ["python", "-m"]
    return words[i + 1 :]


def parse_sweep(args: list[str]):
    from tavaal.sweep.cli import build_parser

    parser = build_parser()
    parser.allow_abbrev = False  # a shipped command spells every flag out
    try:
        return parser.parse_args(args)
    except SystemExit:
        raise AssertionError(f"python -m tavaal.sweep refuses: {args}") from None


def test_rayjob_entrypoint_is_a_valid_sweep_command_on_the_image():
    args = parse_sweep(sweep_args(load(KUBERAY["RayJob"])["spec"]["entrypoint"]))
    for path in (args.config, args.space):  # no --working-dir on KubeRay: the files of the image
        assert path.startswith(IMAGE_HOME + "/") and (ROOT / path[len(IMAGE_HOME) + 1 :]).is_file(), path
    assert f"WORKDIR {IMAGE_HOME}" in dockerfile()
    assert args.tracking_uri == SAMPLE_ENV["MLFLOW_TRACKING_URI"]
    assert args.storage_path == SAMPLE_ENV["TAVAAL_STORAGE_PATH"]
    # The head advertises no CPU, so the default concurrency (CPUs at start / cpus per trial) would be 1.
    assert args.max_concurrent and args.gpus_per_trial == 1


def test_readme_cluster_commands_are_valid_sweep_commands():
    readme = (ROOT / "docs/clusters.md").read_text()
    section = readme.split("## Running on a cloud cluster", 1)[1].split("\n## ", 1)[0]
    commands = [
        c
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for c in block.replace("\\\n", " ").splitlines()
        if "tavaal.sweep" in c
    ]
    assert len(commands) >= 3
    for command in commands:
        args = parse_sweep(sweep_args(command.split(" -- ", 1)[-1].split("#", 1)[0]))
        assert args.storage_path == SAMPLE_ENV["TAVAAL_STORAGE_PATH"], command
        if not args.resume:
            assert args.tracking_uri == SAMPLE_ENV["MLFLOW_TRACKING_URI"] and args.max_concurrent, command
        for path in (args.config, args.space):  # --working-dir . : relative to the checkout
            assert path is None or (ROOT / path).is_file(), path


def test_dockerignore_keeps_what_the_image_needs():
    from tavaal.sweep.presets import PRESETS

    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"  # an allow-list: nothing else (runs/, mlruns/, .git) enters the build context
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    preset_dirs = {p.split("/")[0] for preset in PRESETS.values() for p in (preset["config"], preset["space"])}
    assert {"pyproject.toml", "README.md", "tavaal"} | preset_dirs <= kept
