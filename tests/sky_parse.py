"""SkyPilot's own parsers on our launch files and sweep commands, for tests/test_cloud.py.

Run with a Python that has SkyPilot (the `[cloud]` extra, or the venv .ci/run makes): SkyPilot pins
click below what the test requirements' transformers needs, so it cannot share their venv. Reads
{"launch_files": [...], "mlm_args": "...", "commands": [[...], ...]} on stdin and prints, as JSON,
what each task YAML and each `sky jobs launch` command means to SkyPilot.
"""

import json
import sys

import sky
from sky.client.cli.command import jobs_launch
from sky.utils import yaml_utils


def parse_task(path: str, mlm_args: str) -> dict:
    config = yaml_utils.read_yaml(path)
    try:
        sky.Task.from_yaml_config(dict(config))
        refused_without_args = ""
    except ValueError as e:
        refused_without_args = str(e)
    task = sky.Task.from_yaml_config(config, env_overrides=[("MLM_ARGS", mlm_args)])
    (resources,) = task.resources
    return {
        "refused_without_args": refused_without_args,
        "envs": dict(task.envs),
        "setup": task.setup,
        "run": task.run,
        "workdir": task.workdir,
        "accelerators": list(resources.accelerators),
        "use_spot": resources.use_spot,
        "cloud": str(resources.cloud),
        "accelerator_args": dict(resources.accelerator_args or {}),
    }


def parse_command(command: list[str]) -> dict:
    assert command[:3] == ["sky", "jobs", "launch"], command
    params = jobs_launch.make_context("launch", command[3:]).params
    return {k: params[k] for k in ("detach_run", "yes", "name", "entrypoint", "env")}


def main() -> None:
    request = json.load(sys.stdin)
    print(
        json.dumps(
            {
                "tasks": {p: parse_task(p, request["mlm_args"]) for p in request["launch_files"]},
                "commands": [parse_command(c) for c in request["commands"]],
            },
            default=list,
        )
    )


if __name__ == "__main__":
    main()
