"""From an experiment to a backend: its options, checked against what it declares, and the
requests it runs for a run's jobs.

Options reach a backend three ways, later ones winning: `[backend.<name>]` in experiment.toml,
the launch flags a backend declares (`--partition`, `--max-parallel`), and the generic
`--backend-option NAME=VALUE`. Each is checked against the chosen backend's declaration
(affvx.cluster.base.BackendOption), so an option it does not take is refused in one line that
lists the ones it does.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from affvx.cluster.base import Backend, BackendOption, JobRequest, Resources
from affvx.cluster.errors import ClusterError
from affvx.cluster.registry import backend_class, get_backend
from affvx.orchestrator.config import ExperimentConfig, check_backend_sections, not_an_option
from affvx.orchestrator.errors import ConfigError
from affvx.orchestrator.plan import PlannedJob
from affvx.orchestrator.rundir import RunDir
from affvx.protocol import BACKEND, CUDA_GRAPHS, DEVICE


def with_backend_options(
    config: ExperimentConfig,
    flags: Mapping[str, Any] | None = None,
    option_texts: Sequence[str] = (),
) -> ExperimentConfig:
    """`config` with the launch's backend flags (`{"--partition": "gpu"}`, only those given)
    and `NAME=VALUE` texts added to `[backend.<chosen>]`; ConfigError for any that the chosen
    backend does not declare, or a value of the wrong type."""
    name = config.backend.name
    declared = backend_class(name).options
    by_flag = {option.flag: option for option in declared if option.flag}
    by_name = {option.name: option for option in declared}
    values = config.backend.options_for(name)
    for flag, value in (flags or {}).items():
        if value is None:
            continue
        if flag not in by_flag:
            raise ConfigError(not_an_option(flag, name, list(declared)))
        values[by_flag[flag].name] = _checked(by_flag[flag], value, flag)
    for text in option_texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--backend-option {text!r}: use NAME=VALUE, e.g. qos=long")
        if key not in by_name:
            raise ConfigError(not_an_option(f"--backend-option {key}", name, list(declared)))
        values[key] = _checked(
            by_name[key], _parsed(by_name[key], value), f"--backend-option {key}"
        )
    options = {**config.backend.options, name: values}
    return dataclasses.replace(
        config, backend=dataclasses.replace(config.backend, options=options)
    )


def make_backend(config: ExperimentConfig) -> Backend:
    """The configured backend (ConfigError for options it refuses)."""
    check_backend_sections(config.backend.options)
    name = config.backend.name
    try:
        return get_backend(name, config.backend.options_for(name), f"[backend.{name}] ")
    except ClusterError as error:
        raise ConfigError(str(error)) from None


def job_requests(
    run: RunDir, config: ExperimentConfig, jobs: list[PlannedJob], backend: Backend
) -> list[JobRequest]:
    """What the backend runs for each job: the worker, with the job's resources."""
    root = run.path.resolve()
    resources: Resources = config.resources
    env: tuple[tuple[str, str], ...] = ((BACKEND, backend.name), (DEVICE, "cpu"))
    if resources.gpus:
        env = ((BACKEND, backend.name), (DEVICE, "cuda"), (CUDA_GRAPHS, resources.cuda_graphs))
    return [
        JobRequest(
            key=job.job_id,
            command=(sys.executable, "-m", "affvx.orchestrator.worker", str(root), job.job_id),
            workdir=root,
            log_dir=root / "jobs" / job.job_id / "log",
            resources=resources,
            env=env,
            name=job.job_id,
        )
        for job in jobs
    ]


def _checked(option: BackendOption, value: Any, label: str) -> Any:
    try:
        return option.check(value, label)
    except ClusterError as error:
        raise ConfigError(str(error)) from None


def _parsed(option: BackendOption, text: str) -> Any:
    try:
        return option.parse(text)
    except ClusterError as error:
        raise ConfigError(f"--backend-option {error}") from None
