"""Offline checks of a Ray cluster launcher file (``cluster.yaml``) before ``ray up`` spends money on it.

Two layers. First Ray's own: the file is validated against the autoscaler's JSON schema (every error at once,
so a misspelt key is named with a guess at the intended one), then filled with the provider's defaults by
``prepare_config`` and checked whole by ``validate_config``, as ``ray up`` does. For AWS both only read
Ray's bundled ``defaults.yaml``: no boto3, no credentials, no network (what needs AWS, such as the IAM role,
subnets and the security group, is done later by ``ray up`` in ``bootstrap_config``, which this skips).

Then this project's rules, for the layout the README's "Running on a cluster" describes:

* the Docker image runs the Ray version installed here (driver and cluster must run the same Ray);
* the head node takes no trials (``resources: {CPU: 0}``, no GPU): it runs the driver and the MLflow server;
* every worker node type declares its GPUs (``resources: {GPU: n}`` with n >= 1);
* ``head_start_ray_commands`` start an MLflow server that the workers can reach (``--host``, not loopback);
* ``IAKD_TRACKING_URI`` (an ``http://`` URI on the server's port) and ``IAKD_STORAGE_PATH`` (``s3://`` or
  ``gs://``, not a local folder) are set by the head's commands, for the search's ``--tracking-uri`` and
  ``--storage-path``;
* ``IAKD_OPTUNA_STORAGE`` (the search's ``--optuna-storage``) is set, and a SQLite study lies in a folder the head's
  container mounts from the host (``docker.head_run_options``), as MLflow's database does: a study inside the
  container is lost when ``ray up`` restarts it, and ``--resume`` would find none;
* no AWS credentials are written in the file (nodes get access from their IAM instance profile).

Each problem is one line that starts with the key it concerns, e.g.
``available_node_types.ray.head.default.resources.CPU: 4 lets trials run on the head; ...``.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from iakd.errors import ConfigError

__all__ = ["OPTUNA_STORAGE_VAR", "STORAGE_PATH_VAR", "TRACKING_URI_VAR", "check_cluster_config", "check_cluster_file",
           "placeholders"]

TRACKING_URI_VAR = "IAKD_TRACKING_URI"
STORAGE_PATH_VAR = "IAKD_STORAGE_PATH"
OPTUNA_STORAGE_VAR = "IAKD_OPTUNA_STORAGE"

_SHARED_SCHEMES = ("s3", "gs")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_MLFLOW_DEFAULT_PORT = 5000
# Command lists that run on the head, in the order the launcher runs them (setup_commands run on every node).
_HEAD_COMMANDS = ("initialization_commands", "setup_commands", "head_setup_commands", "head_start_ray_commands")
# AWS GPU families (p3, p4d, p5, g4dn, g5, g6, g6e, ...): the launcher advertises their GPUs unless told otherwise.
_GPU_INSTANCE = re.compile(r"^(p\d|g\d)[a-z0-9-]*\.", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"<YOUR_[A-Z0-9_]+>")
_SECRETS = (
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"aws_secret_access_key|aws_session_token", re.IGNORECASE), "an AWS secret key or session token"),
)


def placeholders(path: str | Path) -> list[str]:
    """The ``<YOUR_...>`` placeholders still in the file, sorted: values a user must fill in before ``ray up``."""
    return sorted(set(_PLACEHOLDER.findall(Path(path).read_text())))


def check_cluster_file(path: str | Path) -> list[str]:
    """Check a cluster launcher YAML file; return its problems, one line each (empty: the file is good).

    Raises ConfigError when the file cannot be read or is not a YAML mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of cluster launcher keys at the top level")
    return _secret_problems(text) + check_cluster_config(config)


def check_cluster_config(config: Mapping[str, Any], ray_version: str | None = None) -> list[str]:
    """Check a parsed cluster config: Ray's schema and defaults first, then the project's rules.

    The project's rules are only applied to a config that Ray accepts, so one mistake gives one line.
    ``ray_version`` is the version the image must run (default: the installed ``ray.__version__``).
    """
    import ray

    problems = _schema_problems(config)
    if problems:
        return problems
    prepared, problems = _prepare(config)
    if prepared is None:
        return problems
    return (_image_problems(prepared, ray_version or ray.__version__) + _head_problems(prepared)
            + _worker_problems(prepared) + _tracking_problems(config, prepared) + _storage_problems(config)
            + _optuna_problems(config))


# ------------------------------------------------------------------------------------------ Ray's checks


def _schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _key(path: Iterable[Any]) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _schema_problems(config: Mapping[str, Any]) -> list[str]:
    import jsonschema

    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = []
    for error in sorted(validator.iter_errors(dict(config)), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            patterns = list(error.schema.get("patternProperties", {}))
            for name in error.instance:
                if name in known or any(re.search(p, name) for p in patterns):
                    continue
                guess = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {guess[0]}?" if guess else f"; allowed: {', '.join(known)}"
                problems.append(f"{_key([*path, name])}: not a key of Ray's cluster schema{hint}")
        elif error.validator == "required" and isinstance(error.instance, dict):
            problems += [f"{_key([*path, name])}: missing (Ray's cluster schema requires it)"
                         for name in error.validator_value if name not in error.instance]
        else:
            problems.append(f"{_key(path)}: {error.message}")
    return problems


def _prepare(config: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Ray's ``prepare_config`` (provider defaults merged in) and ``validate_config``, as ``ray up`` runs them."""
    import jsonschema

    # Ray has no public API that checks a cluster file the way `ray up` does: prepare_config and validate_config
    # live in ray.autoscaler._private.util (what ray.autoscaler.sdk.create_or_update_cluster calls). Tested with
    # the Ray that pyproject.toml pins (>=2.60,<2.61); tests/test_cluster_file.py runs them on cluster.yaml.
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        with _quiet("ray.autoscaler"):
            prepared = prepare_config(copy.deepcopy(dict(config)))
    except KeyError as e:
        return None, [f"{e.args[0]}: missing (Ray's prepare_config needs it)"]
    except NotImplementedError as e:
        return None, [f"provider.type: {e}"]
    except (AssertionError, ValueError) as e:
        return None, [f"{_key_in_message(str(e))}: {e}"]
    try:
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        return None, [f"{_key(e.absolute_path)}: {e.message} (after Ray's defaults were filled in)"]
    except (ValueError, RuntimeError) as e:
        return None, [f"{_key_in_message(str(e))}: {e}"]
    return prepared, []


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """prepare_config logs each default it fills in at INFO; a check's output is its problems only."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _key_in_message(message: str) -> str:
    """Ray's own messages quote the key they concern in backticks (``head_node_type`` must be ...)."""
    match = re.search(r"`(\w+)`", message)
    if match:
        return match.group(1)
    return "docker.container_name" if "container" in message else "<cluster file>"


# ------------------------------------------------------------------------------------ the project's rules


def _image_problems(config: Mapping[str, Any], ray_version: str) -> list[str]:
    docker = config.get("docker") or {}
    images = {f"docker.{k}": docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for name, node_type in config["available_node_types"].items():
        image = (node_type.get("docker") or {}).get("worker_image")
        if image:
            images[f"available_node_types.{name}.docker.worker_image"] = image
    wanted = f"rayproject/ray:{ray_version}-py311-gpu"
    if not images:
        return [f"docker.image: missing; run the nodes in {wanted} (the Ray version installed here)"]
    problems = []
    for key, image in images.items():
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        version = re.match(r"(\d+\.\d+\.\d+)", tag)
        if version is None:
            problems.append(f"{key}: {image!r} names no Ray version; pin it, e.g. {wanted}")
        elif version.group(1) != ray_version:
            problems.append(f"{key}: {image!r} runs Ray {version.group(1)} but Ray {ray_version} is installed here "
                            f"(pyproject.toml pins it); driver and cluster must run the same Ray: use {wanted}")
        python = re.search(r"-py3(\d+)", tag)
        if python and int(python.group(1)) < 10:
            problems.append(f"{key}: {image!r} has Python 3.{python.group(1)}; the project needs Python >= 3.10")
    return problems


def _head_problems(config: Mapping[str, Any]) -> list[str]:
    head = config["head_node_type"]
    node_type = config["available_node_types"][head]
    resources = node_type.get("resources") or {}
    key = f"available_node_types.{head}.resources"
    instance = str((node_type.get("node_config") or {}).get("InstanceType", ""))
    problems = []
    if "CPU" not in resources:
        problems.append(f"{key}.CPU: missing; set CPU: 0 so no trial runs on the head (the launcher would "
                        "advertise the instance's CPUs to Ray)")
    elif resources["CPU"] != 0:
        problems.append(f"{key}.CPU: {resources['CPU']} lets trials run on the head; set 0 (the head runs the "
                        "driver and the MLflow server only)")
    if resources.get("GPU", 0) != 0:
        problems.append(f"{key}.GPU: {resources['GPU']}: the head takes no trials; remove it and use a CPU "
                        "instance type")
    elif "GPU" not in resources and _GPU_INSTANCE.match(instance):
        problems.append(f"{key}.GPU: missing on the GPU instance type {instance}: the launcher would advertise its "
                        "GPUs to trials; use a CPU instance type for the head (or set GPU: 0)")
    return problems


def _worker_problems(config: Mapping[str, Any]) -> list[str]:
    head = config["head_node_type"]
    workers = {name: t for name, t in config["available_node_types"].items() if name != head}
    if not workers:
        return ["available_node_types: no worker node type; add one with GPUs (trials never run on the head)"]
    problems = []
    if config.get("max_workers", 0) < 1:
        problems.append(f"max_workers: {config.get('max_workers')} starts no worker node; trials need at least one")
    for name, node_type in workers.items():
        gpus = (node_type.get("resources") or {}).get("GPU")
        if gpus is None or gpus < 1:
            instance = (node_type.get("node_config") or {}).get("InstanceType", "?")
            state = "missing" if gpus is None else f"{gpus}"
            problems.append(f"available_node_types.{name}.resources.GPU: {state}; every worker type declares its "
                            f"GPUs (>= 1, the count of the instance type {instance}) so that trials are placed there")
        if node_type.get("max_workers", 1) < 1:
            problems.append(f"available_node_types.{name}.max_workers: 0 never starts a node of this type")
    return problems


def _commands(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key) or []
    return [c for c in value if isinstance(c, str)]


def _option(tokens: list[str], *names: str) -> str | None:
    """The value of a command-line option given as ``--name value`` or ``--name=value``."""
    for i, token in enumerate(tokens):
        for name in names:
            if token == name and i + 1 < len(tokens):
                return tokens[i + 1]
            if name.startswith("--") and token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def _mlflow_server(config: Mapping[str, Any]) -> list[str] | None:
    """The tokens of the ``mlflow server`` command in head_start_ray_commands, from ``server`` on."""
    for command in _commands(config, "head_start_ray_commands"):
        if re.search(r"\bmlflow\s+server\b", command):
            try:
                tokens = shlex.split(command, comments=True)
            except ValueError:  # unbalanced quotes: the shell would fail too, but read what can be read
                tokens = command.split()
            start = next((i for i, t in enumerate(tokens) if t == "server"), 0)
            return tokens[start:]
    return None


def _assignment(config: Mapping[str, Any], variable: str) -> tuple[str, str] | None:
    """(list key, value) of the first ``VARIABLE=value`` in the commands that run on the head."""
    pattern = re.compile(rf"\b{variable}=[\"']?([^\s\"';&|]+)")
    for key in _HEAD_COMMANDS:
        for command in _commands(config, key):
            match = pattern.search(command)
            if match:
                return key, match.group(1)
    return None


def _tracking_problems(raw: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    server = _mlflow_server(config)
    if server is None:
        return [("head_start_ray_commands: no 'mlflow server' command; start the tracking server on the head there "
                "(trials on the workers log to it over http)")]
    problems = []
    host = _option(server, "--host", "-h")
    port = _option(server, "--port", "-p") or str(_MLFLOW_DEFAULT_PORT)
    if host is None or host in _LOOPBACK:
        shown = host or "127.0.0.1, mlflow's default"
        problems.append(f"head_start_ray_commands: the mlflow server listens on {shown}, which the workers cannot "
                        f"reach; add --host 0.0.0.0 (the cluster's security group keeps port {port} inside the VPC)")
    found = _assignment(raw, TRACKING_URI_VAR)
    if found is None:
        problems.append(f"head_setup_commands: {TRACKING_URI_VAR} is not set; export the server's URI "
                        f"(http://<head private IP>:{port}) for the search's --tracking-uri")
        return problems
    key, uri = found
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        problems.append(f"{key}: {TRACKING_URI_VAR}={uri} is not an http:// URI; on a cluster every trial must log "
                        "to the MLflow server")
        return problems
    if parts.hostname in _LOOPBACK:
        problems.append(f"{key}: {TRACKING_URI_VAR}={uri} is the loopback address, which on a worker is the worker "
                        "itself; use the head's private IP")
    try:
        uri_port = str(parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:  # a port written as a shell variable: cannot be compared offline
        uri_port = port
    if uri_port != port:
        problems.append(f"{key}: {TRACKING_URI_VAR}={uri} points at port {uri_port} but the mlflow server listens "
                        f"on {port}")
    return problems


def _storage_problems(raw: Mapping[str, Any]) -> list[str]:
    found = _assignment(raw, STORAGE_PATH_VAR)
    if found is None:
        return [(f"head_setup_commands: {STORAGE_PATH_VAR} is not set; export the Tune storage path (s3://<bucket>/"
                "ray_results) for the search's --storage-path")]
    key, value = found
    if urlsplit(value).scheme not in _SHARED_SCHEMES:
        return [(f"{key}: {STORAGE_PATH_VAR}={value} is a local folder, which each node would keep for itself; use "
                "shared storage: s3://<bucket>/<prefix> (or gs://)")]
    return []


def _mounted_folders(config: Mapping[str, Any]) -> list[str]:
    """The container folders of the head's ``--volume=host:container`` (or ``-v``) options."""
    folders = []
    for option in (config.get("docker") or {}).get("head_run_options") or []:
        tokens = shlex.split(str(option))
        for i, token in enumerate(tokens):
            value = token.split("=", 1)[1] if token.startswith("--volume=") else (
                tokens[i + 1] if token in ("-v", "--volume") and i + 1 < len(tokens) else None)
            if value and ":" in value:
                folders.append(value.split(":")[1].rstrip("/"))
    return folders


def _optuna_problems(raw: Mapping[str, Any]) -> list[str]:
    found = _assignment(raw, OPTUNA_STORAGE_VAR)
    if found is None:
        return [(f"head_setup_commands: {OPTUNA_STORAGE_VAR} is not set; export the Optuna study's storage for the "
                 "search's --optuna-storage (sqlite:////home/ray/mlflow/optuna.db, beside MLflow's database)")]
    key, value = found
    if not value.startswith("sqlite:///") or not raw.get("docker"):
        return []  # a database server (postgresql://...), or no container: the head's own disk
    path = value[len("sqlite:///"):]
    mounted = _mounted_folders(raw)
    if not any(path.startswith(f"{folder}/") for folder in mounted):
        where = ", ".join(mounted) if mounted else "none (docker.head_run_options has no --volume)"
        return [(f"{key}: {OPTUNA_STORAGE_VAR}={value} is inside the head's container, which `ray up` may replace; "
                 f"put the study in a folder mounted from the host (mounted: {where})")]
    return []


def _secret_problems(text: str) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            continue
        for pattern, what in _SECRETS:
            if pattern.search(line):
                problems.append(f"line {number}: holds {what}; write no credentials here: nodes get AWS access "
                                "from their IAM instance profile")
    return problems
