"""deploy/ runs the commands it means to, with flags `tidal` has.

Nothing here needs systemd, Docker, Kubernetes or Slurm running: the units go through
`systemd-analyze verify` and their command lines start a real scheduler and executor; the
manifests go through their schemas (kubernetes-validate) and their key volumes are laid out
from real keys; the Slurm script is run in its dry run and with a stand-in `srun`; the
Dockerfile is read. Every command line any of them gives `tidal` is parsed by its own
argument parser, so a renamed flag fails here.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fnmatch
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
import zmq.auth

from tidal.runtime.auth import generate_keys, load_peer_keys, load_server_keys
from tidal.runtime.cli import _parser
from tidal.runtime.client import Client
from tidal.runtime.memory import parse_size
from tidal.runtime.processes import stop_process
from tidal.scheduler.service import ANNOUNCEMENT
from tidal.workloads.synthetic import total

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
MANIFESTS = DEPLOY / "kubernetes"
SBATCH = DEPLOY / "slurm" / "tidal.sbatch"
DOCKERFILE = DEPLOY / "Dockerfile"

# The Kubernetes version the manifests are checked against (the README says the same).
KUBERNETES_VERSION = "1.30.0"


def parse_tidal(argv: list[str]):
    """`tidal ARGV` parsed by the real parser; a test failure naming argparse's complaint
    (an unknown or renamed flag, a missing argument) if it refuses. Defaults that come from
    TIDAL_* variables are read later, when a command runs: that is tested by running one."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return without_abbreviations(_parser()).parse_args(argv)
        except SystemExit:
            pytest.fail(f"tidal refuses {shlex.join(argv)}:\n{stderr.getvalue()}")


def without_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`parser` and its subcommands' parsers, taking whole flags only: `--mem` for
    `--memory-limit` would work today and break when another flag starts with `--mem`."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                without_abbreviations(subparser)
    return parser


# ---- systemd ----------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings: section -> key -> values, in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())  # continuation lines
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_environment_file(path: Path) -> dict[str, str]:
    """VAR=value lines, as systemd's EnvironmentFile= reads them (quotes around a value go)."""
    environ = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        environ[name.strip()] = value
    return environ


def exec_start(unit: Path, environ: dict[str, str], specifiers: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it: specifiers (%H, %i, %S) filled in, a word
    `$VAR` replaced by the variable's value split at whitespace, `${VAR}` by the value."""
    (command,) = read_unit(unit)["Service"]["ExecStart"]
    argv = []
    for word in shlex.split(command):
        word = re.sub(r"%(.)", lambda m: "%" if m[1] == "%" else specifiers[m[1]], word)
        if whole := re.fullmatch(r"\$(\w+)", word):
            argv += environ.get(whole[1], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: environ.get(m[1], ""), word))
    return argv


UNIT_ENVIRONMENT = read_environment_file(UNITS / "tidal.env")
SPECIFIERS = {"H": "host-a", "i": "1", "S": "/var/lib"}


def unit_command(name: str) -> list[str]:
    """The `tidal` arguments of unit `name` with the example environment file (the
    installed binary's path dropped)."""
    binary, *args = exec_start(UNITS / name, UNIT_ENVIRONMENT, SPECIFIERS)
    assert Path(binary).name == "tidal", binary
    return args


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    # verify insists that ExecStart's binary exists: a stand-in takes the installed path's place.
    stand_in = tmp_path / "tidal"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert "/opt/tidal/bin/tidal " in text, unit
        (copy := tmp_path / unit.name).write_text(
            text.replace("/opt/tidal/bin/tidal", str(stand_in))
        )
        copies.append(copy)
    assert [c.name for c in copies] == ["tidal-executor@.service", "tidal-scheduler.service"]
    result = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True)
    # verify exits 0 even for a misspelt key or a bad value: it only says so.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # ...as it does here, so an empty answer means something.
    (typo := tmp_path / "typo.service").write_text(
        copies[1].read_text().replace("Restart=on-failure", "Restart=on-failur")
    )
    said = subprocess.run([analyze, "verify", typo], capture_output=True, text=True)
    assert "on-failur" in said.stderr


def test_both_units_run_as_tidal_with_the_same_environment_file():
    for name in ("tidal-scheduler.service", "tidal-executor@.service"):
        service = read_unit(UNITS / name)["Service"]
        assert service["User"] == ["tidal"], name
        assert service["EnvironmentFile"] == ["/etc/tidal/tidal.env"], name
        assert service["Restart"] == ["on-failure"], name


def test_the_scheduler_unit_binds_the_port_the_environment_file_names():
    args = parse_tidal(unit_command("tidal-scheduler.service"))
    bind, address = urlsplit(args.bind), urlsplit(UNIT_ENVIRONMENT["TIDAL_SCHEDULER_ADDRESS"])
    assert (bind.hostname, bind.port) == ("0.0.0.0", address.port)
    # In its StateDirectory=, which systemd makes and gives to the tidal user.
    assert read_unit(UNITS / "tidal-scheduler.service")["Service"]["StateDirectory"] == ["tidal"]
    assert args.journal == "/var/lib/tidal/journal.sqlite"


def test_an_executor_unit_is_named_for_its_host_and_slot():
    args = parse_tidal(unit_command("tidal-executor@.service"))
    assert (args.node, args.executor_id) == ("host-a", "host-a-1")
    assert args.memory_limit == "2GiB"  # from TIDAL_EXECUTOR_OPTIONS


@pytest.mark.slow
def test_the_units_command_lines_make_a_cluster_from_the_environment_file(tmp_path):
    # The scheduler's host has the key directory; the executor's host what was made for it.
    generate_keys(tmp_path / "keys")
    generate_keys(tmp_path / "keys", peer="host-a")
    (tmp_path / "state" / "tidal").mkdir(parents=True)  # StateDirectory=
    specifiers = {**SPECIFIERS, "S": str(tmp_path / "state")}
    # What the test changes in the file: ports and paths of this machine (a later flag wins).
    scheduler_env = {
        **UNIT_ENVIRONMENT,
        "TIDAL_KEYS": str(tmp_path / "keys"),
        "TIDAL_SCHEDULER_OPTIONS": UNIT_ENVIRONMENT["TIDAL_SCHEDULER_OPTIONS"]
        + " --bind tcp://127.0.0.1:* --dashboard 127.0.0.1:0 --announce",
    }
    _, *args = exec_start(UNITS / "tidal-scheduler.service", scheduler_env, specifiers)
    scheduler = start_tidal(args, scheduler_env, tmp_path, stdout=subprocess.PIPE)
    executor = None
    try:
        address = read_announced_address(scheduler)
        executor_env = {
            **UNIT_ENVIRONMENT,
            "TIDAL_SCHEDULER_ADDRESS": address,
            "TIDAL_KEYS": str(tmp_path / "keys" / "peers" / "host-a"),
        }
        _, *args = exec_start(UNITS / "tidal-executor@.service", executor_env, specifiers)
        executor = start_tidal(args, executor_env, tmp_path)
        with Client(address, keys=tmp_path / "keys", timeout=30) as client:
            status = client.wait_for_status(
                lambda s: (
                    executor.poll() is not None
                    or any(e["executor_id"] == "host-a-1" for e in s["executors"])
                ),
                timeout=60,
            )
            assert executor.poll() is None, f"the executor exited with code {executor.poll()}"
            assert [e["node"] for e in status["executors"]] == ["host-a"]
            assert client.submit(total, [1, 2, 3]).result(timeout=30) == 6
    finally:
        for process in (executor, scheduler):
            if process is not None:
                stop_process(process)
        scheduler.stdout.close()


def start_tidal(args, environ, cwd, **options) -> subprocess.Popen:
    """`tidal ARGS` in a child with `environ` over this environment, less its TIDAL_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tidal", *args], env={**env, **environ}, cwd=cwd, **options
    )


def read_announced_address(scheduler: subprocess.Popen) -> str:
    for line in scheduler.stdout:
        if line.decode().startswith(ANNOUNCEMENT):
            return line.decode()[len(ANNOUNCEMENT) :].strip()
    pytest.fail(f"the scheduler exited with code {scheduler.wait()} before it listened")


# ---- Kubernetes ---------------------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    """(FILE:KIND/NAME, the document) of every manifest."""
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(MANIFESTS.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def manifest(kind: str, name: str) -> dict:
    (doc,) = [d for _, d in manifests() if (d["kind"], d["metadata"]["name"]) == (kind, name)]
    return doc


def container(deployment: str) -> dict:
    (only,) = manifest("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def container_command(deployment: str) -> list[str]:
    """The `tidal` arguments of a Deployment's container: the image's entry point is `tidal`
    (checked below), so they are its `args`."""
    spec = container(deployment)
    assert "command" not in spec, "the image's entry point runs tidal"
    return spec["args"]


def test_the_manifests_are_the_ones_checked_here():
    assert sorted(name for name, _ in manifests()) == [
        "executor.yaml:Deployment/tidal-executor",
        "scheduler.yaml:Deployment/tidal-scheduler",
        "scheduler.yaml:Service/tidal-scheduler",
    ]


@pytest.mark.parametrize("name, doc", manifests(), ids=[name for name, _ in manifests()])
def test_each_manifest_validates_against_the_kubernetes_schema(name, doc):
    try:  # strict: an unknown (misspelt) field fails too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{name}: {exc.message}")


def test_executors_reach_the_scheduler_through_its_service():
    service = manifest("Service", "tidal-scheduler")
    scheduler = parse_tidal(container_command("tidal-scheduler"))
    executor = parse_tidal(container_command("tidal-executor"))
    target = urlsplit(executor.scheduler)
    name = service["metadata"]["name"]
    assert target.hostname == name or target.hostname.startswith(f"{name}.")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == target.port]
    # ...to the scheduler's pods, on the container port the scheduler binds.
    pods = manifest("Deployment", "tidal-scheduler")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()
    ports = {p["name"]: p["containerPort"] for p in container("tidal-scheduler")["ports"]}
    assert ports[port["targetPort"]] == urlsplit(scheduler.bind).port
    # The dashboard's Service port leads to where the dashboard listens.
    (dashboard,) = [p for p in service["spec"]["ports"] if p["name"] == "dashboard"]
    assert ports[dashboard["targetPort"]] == int(scheduler.dashboard.rpartition(":")[2])


def test_each_deployment_selects_its_own_pods_and_runs_as_the_images_user():
    user = dockerfile_user()
    for name in ("tidal-scheduler", "tidal-executor"):
        spec = manifest("Deployment", name)["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        assert spec["template"]["spec"]["securityContext"]["runAsUser"] == int(user), name
    assert manifest("Deployment", "tidal-scheduler")["spec"]["replicas"] == 1


def test_variables_in_container_arguments_are_defined():
    for name in ("tidal-scheduler", "tidal-executor"):
        spec = container(name)
        defined = {variable["name"] for variable in spec.get("env", [])}
        used = {m for arg in spec["args"] for m in re.findall(r"\$\((\w+)\)", arg)}
        assert used <= defined, name
    (node,) = [v for v in container("tidal-executor")["env"] if v["name"] == "NODE_NAME"]
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert parse_tidal(container_command("tidal-executor")).node == "$(NODE_NAME)"


def quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity such as 2Gi or 512Mi."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6}
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", text).groups()
    return int(number) * (units[unit] if unit else 1)


def test_containers_have_resources_and_tidals_memory_limit_fires_before_the_kernels():
    for name in ("tidal-scheduler", "tidal-executor"):
        resources = container(name)["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), name
        assert "memory" in resources["limits"], name
    executor = container("tidal-executor")
    limit = quantity(executor["resources"]["limits"]["memory"])
    (shm,) = [
        v["emptyDir"]
        for v in manifest("Deployment", "tidal-executor")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "shm"
    ]
    assert shm["medium"] == "Memory"
    (mount,) = [m for m in executor["volumeMounts"] if m["name"] == "shm"]
    assert mount["mountPath"] == "/dev/shm"  # where spools go
    rss = parse_size(parse_tidal(container_command("tidal-executor")).memory_limit)
    # The spool in /dev/shm counts against the container's memory, not against the RSS.
    assert rss + quantity(shm["sizeLimit"]) < limit


def keys_volume(deployment: str, secret: dict[str, bytes], into: Path) -> Path:
    """Lay out the `keys` volume of `deployment` from `secret`'s data, as the kubelet does;
    return the folder its container sees (checked to be the one given to --keys)."""
    pod = manifest("Deployment", deployment)["spec"]["template"]["spec"]
    (volume,) = [v["secret"] for v in pod["volumes"] if v["name"] == "keys"]
    assert volume["secretName"] == "tidal-keys"
    for item in volume["items"]:
        (into / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (into / item["path"]).write_bytes(secret[item["key"]])
        (into / item["path"]).chmod(0o400)
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "keys"]
    assert parse_tidal(container_command(deployment)).keys == mount["mountPath"]
    return into


def test_the_keys_secret_gives_each_side_what_it_needs_and_executors_get_in(tmp_path):
    generate_keys(tmp_path / "keys")
    # `kubectl create secret generic tidal-keys --from-file=keys/`: the folder's files.
    secret = {p.name: p.read_bytes() for p in (tmp_path / "keys").iterdir() if p.is_file()}
    scheduler = keys_volume("tidal-scheduler", secret, tmp_path / "scheduler")
    executor = keys_volume("tidal-executor", secret, tmp_path / "executor")
    server, peer = load_server_keys(scheduler), load_peer_keys(executor)
    authorized = {zmq.auth.load_certificate(p)[0] for p in server.authorized.glob("*.key")}
    assert peer.public in authorized  # the scheduler lets the executors in
    assert peer.server_public == server.public  # and they know it is the scheduler
    assert not (executor / "scheduler.key_secret").exists()


# ---- Slurm --------------------------------------------------------------------------------

NODES = ["node1", "node2", "node3"]


class FakeSlurm:
    """Runs the batch script as sbatch would on a 3-node allocation of 8 CPUs a node, with a
    stand-in `scontrol` (it expands the node list) and an `srun` that logs each step to
    `log`, says so on the FIFO `ready`, then runs until it is stopped."""

    def __init__(self, tmp_path: Path) -> None:
        bin_ = tmp_path / "bin"
        bin_.mkdir()
        write_script(
            bin_ / "scontrol",
            f'[[ "$*" == "show hostnames node[1-3]" ]] || exit 1\nprintf "%s\\n" {" ".join(NODES)}',
        )
        write_script(
            bin_ / "srun",
            'printf "%s %s\\n" $$ "$(printf "%q " srun "$@")" >> "$FAKE_SRUN_LOG"\n'
            'echo ready > "$FAKE_SRUN_READY"\n'
            "exec sleep infinity  # a step: runs until the script stops it",
        )
        self.log, self.ready = tmp_path / "srun.log", tmp_path / "ready"
        os.mkfifo(self.ready)
        self.cwd = tmp_path
        self.environ = {
            "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}",
            "SLURM_JOB_ID": "42",
            "SLURM_JOB_NODELIST": "node[1-3]",
            "SLURM_JOB_NUM_NODES": "3",
            "SLURM_CPUS_ON_NODE": "8",
            "FAKE_SRUN_LOG": str(self.log),
            "FAKE_SRUN_READY": str(self.ready),
        }

    def __call__(self, args=(), environ=None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDAL_", "SLURM_"))}
        # Output to files, not pipes: a step the script failed to stop would hold a pipe
        # open, and the run would wait for it.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            run = subprocess.run(
                ["bash", str(SBATCH), *args],
                env={**env, **self.environ, **(environ or {})},
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                timeout=60,
            )
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(run.args, run.returncode, out.read(), err.read())

    def step_pids(self) -> list[int]:
        """The pids of the steps started so far (each runs as its `srun`'s process)."""
        if not self.log.exists():
            return []
        return [int(line.split(" ", 1)[0]) for line in self.log.read_text().splitlines()]


@pytest.fixture
def slurm(tmp_path) -> FakeSlurm:
    return FakeSlurm(tmp_path)


def write_script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def steps(lines: list[list[str]]) -> dict[str, list[tuple[dict[str, str], list[str]]]]:
    """srun lines -> {"scheduler"|"executor": [(srun's options, tidal's arguments)]}."""
    found: dict[str, list] = {"scheduler": [], "executor": []}
    for words in lines:
        if words[0] != "srun":
            continue
        # The script writes srun's options as --name=value, so the first other word starts
        # the command it runs.
        split = next(i for i in range(1, len(words)) if not words[i].startswith("-"))
        options = dict(w.removeprefix("--").partition("=")[::2] for w in words[1:split])
        assert words[split] == "tidal", words
        found[words[split + 1]].append((options, words[split + 1 :]))
    return found


def test_the_slurm_dry_run_starts_a_scheduler_on_the_first_node_and_an_executor_on_each(slurm):
    result = slurm(["--dry-run", "python", "my_app.py", "an argument"])
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    found = steps(lines)
    ((options, args),) = found["scheduler"]
    assert (options["nodelist"], options["nodes"], options["ntasks"]) == ("node1", "1", "1")
    assert parse_tidal(args).bind == "tcp://0.0.0.0:5555"
    assert "--keys" not in args  # none given: none passed
    executors = [(options, parse_tidal(args)) for options, args in found["executor"]]
    assert [(o["nodelist"], o["ntasks"], a.node) for o, a in executors] == [
        (node, "1", node) for node in NODES
    ]
    assert {a.scheduler for _, a in executors} == {"tcp://node1:5555"}
    assert {(a.nworkers, o["cpus-per-task"]) for o, a in executors} == {(8, "8")}
    assert lines[-1] == [
        "env",
        "TIDAL_SCHEDULER_ADDRESS=tcp://node1:5555",
        "python",
        "my_app.py",
        "an argument",
    ]
    # The same through the variable; and a dry run runs nothing.
    again = slurm(["python", "my_app.py", "an argument"], {"TIDAL_SLURM_DRY_RUN": "1"})
    assert again.stdout == result.stdout
    assert not slurm.log.exists()


def test_the_slurm_script_passes_keys_port_and_options_on(slurm):
    result = slurm(
        ["--dry-run"],
        {
            "TIDAL_KEYS": "/shared/tidal keys",
            "TIDAL_SLURM_PORT": "6000",
            "TIDAL_SCHEDULER_OPTIONS": "--dashboard 0.0.0.0:8787 --policy fifo",
            "TIDAL_EXECUTOR_OPTIONS": "--memory-limit 8GiB --nworkers 4",
        },
    )
    assert result.returncode == 0, result.stderr
    found = steps([shlex.split(line) for line in result.stdout.splitlines()])
    ((_, args),) = found["scheduler"]
    scheduler = parse_tidal(args)
    assert (scheduler.bind, scheduler.keys) == ("tcp://0.0.0.0:6000", "/shared/tidal keys")
    assert (scheduler.dashboard, scheduler.policy) == ("0.0.0.0:8787", "fifo")
    for _, args in found["executor"]:
        executor = parse_tidal(args)
        assert (executor.scheduler, executor.keys) == ("tcp://node1:6000", "/shared/tidal keys")
        assert (executor.memory_limit, executor.nworkers) == ("8GiB", 4)  # the later flag wins
    assert len(result.stdout.splitlines()) == 1 + len(NODES)  # no program: none to run


def test_the_slurm_script_says_so_outside_a_job(slurm):
    result = slurm(["--dry-run"], {"SLURM_JOB_NODELIST": ""})
    assert result.returncode != 0 and "not in a Slurm job" in result.stderr


def test_the_slurm_script_runs_the_program_then_stops_every_step(slurm):
    # The program waits until every step has started (each tells `ready`), checks the
    # address it was given, and exits 7: the script must exit 7 too, with no step left.
    program = slurm.cwd / "program.py"
    program.write_text(
        "import os, sys\n"
        "ready = open(os.open(sys.argv[1], os.O_RDWR))\n"  # read-write: never at its end
        "for _ in range(int(sys.argv[2])):\n"
        "    ready.readline()\n"
        "sys.exit(7 if os.environ['TIDAL_SCHEDULER_ADDRESS'] == 'tcp://node1:5555' else 1)\n"
    )
    command = [sys.executable, str(program), str(slurm.ready), str(1 + len(NODES))]
    try:
        result = slurm(command)
        assert result.returncode == 7, result.stderr
        logged = slurm.log.read_text().splitlines()
        dry = slurm(["--dry-run", *command]).stdout.splitlines()
        # The steps are the dry run's (the program's line last), started in any order.
        assert sorted(shlex.split(line.split(" ", 1)[1]) for line in logged) == sorted(
            shlex.split(line) for line in dry[:-1]
        )
        for pid in slurm.step_pids():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        for pid in slurm.step_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


# ---- the Docker image -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for each instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def dockerfile_user() -> str:
    (*_, (_, user)) = [i for i in dockerfile() if i[0] == "USER"]
    return user.partition(":")[0]


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def cfg_list(config: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return [line.strip() for line in config[section].get(key, "").splitlines() if line.strip()]


def cfg_map(config: configparser.ConfigParser, section: str, key: str) -> dict[str, str]:
    return dict(
        (part.strip() for part in line.split("=", 1)) for line in cfg_list(config, section, key)
    )


def test_the_image_runs_the_tidal_entry_point_as_a_user_other_than_root():
    instructions = dockerfile()
    stages = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert set(stages) == {"python:3.11-slim"}
    (entrypoint,) = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tidal"]
    scripts = cfg_map(setup_cfg(), "options.entry_points", "console_scripts")
    module, _, function = scripts["tidal"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert dockerfile_user() not in ("root", "0") and dockerfile_user().isdigit()


def test_the_dockerfile_copies_what_pip_needs_from_files_that_exist():
    sources = []
    for word, rest in dockerfile():
        if word == "COPY" and not rest.startswith("--from"):
            *from_, _ = shlex.split(rest)
            sources += [source.rstrip("/") for source in from_]
    for source in sources:
        assert (ROOT / source).exists(), source
    ignored = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # ...and none of them is kept out of the build context: not a source, nor a folder it is
    # in (a `**/NAME` pattern matches NAME at any depth).
    for source in sources:
        parts = Path(source).parts
        for end in range(1, len(parts) + 1):
            for pattern in ignored:
                if pattern.startswith("**/"):
                    assert not fnmatch.fnmatch(parts[end - 1], pattern[3:]), (source, pattern)
                else:
                    assert not fnmatch.fnmatch("/".join(parts[:end]), pattern), (source, pattern)
    # What setup.cfg and setup.py build from: the package folders, the files setup.cfg
    # names, and the C sources of the extensions (inside those folders).
    config = setup_cfg()
    needed = {"setup.py", "setup.cfg", "pyproject.toml"}
    needed |= set(cfg_map(config, "options", "package_dir").values())
    needed |= set(cfg_list(config, "metadata", "license_files"))
    needed |= {config["metadata"]["long_description"].removeprefix("file:").strip()}
    needed |= set(re.findall(r'sources=\["([^"]+)"\]', (ROOT / "setup.py").read_text()))
    assert {n for n in needed if not any(n == s or n.startswith(f"{s}/") for s in sources)} == set()


def own_files(package: Path) -> list[Path]:
    """The files of the package in folder `package`, not those of its subpackages."""
    files = []
    for path in sorted(package.rglob("*")):
        folders = [package / f for f in path.relative_to(package).parents if f != Path(".")]
        in_subpackage = any((folder / "__init__.py").exists() for folder in folders)
        if path.is_file() and "__pycache__" not in path.parts and not in_subpackage:
            files.append(path)
    return files


def test_the_installed_package_has_every_module_and_data_file_the_image_copies():
    # The image installs a wheel, not the folders: what setup.cfg leaves out is not in it.
    config = setup_cfg()
    packages = set(cfg_list(config, "options", "packages"))
    package_data = {
        name: value.split()
        for name, value in (
            config["options.package_data"].items() if "options.package_data" in config else []
        )
    }
    missing = []
    for top, folder in cfg_map(config, "options", "package_dir").items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            name = ".".join([top, *init.parent.relative_to(ROOT / folder).parts])
            if name not in packages:
                missing.append(f"the package {name}")
            for path in own_files(init.parent):
                if path.suffix in {".py", ".pyc", ".so", ".c", ".h"}:
                    continue  # modules; built extensions and their sources
                inside = str(path.relative_to(init.parent))
                if not any(fnmatch.fnmatch(inside, p) for p in package_data.get(name, [])):
                    missing.append(f"{path.relative_to(ROOT)} (package_data of {name})")
    assert missing == [], "setup.cfg leaves out " + "; ".join(missing)


# ---- every flag -------------------------------------------------------------------------------


def slurm_commands(tmp_path) -> list[list[str]]:
    """The `tidal` command lines of the Slurm script's dry run, keys given."""
    result = FakeSlurm(tmp_path)(["--dry-run"], {"TIDAL_KEYS": "/shared/keys"})
    assert result.returncode == 0, result.stderr
    found = steps([shlex.split(line) for line in result.stdout.splitlines()])
    return [args for step in found.values() for _, args in step]


COMMAND_LINES = {
    "systemd scheduler": lambda _: [unit_command("tidal-scheduler.service")],
    "systemd executor": lambda _: [unit_command("tidal-executor@.service")],
    "kubernetes scheduler": lambda _: [container_command("tidal-scheduler")],
    "kubernetes executor": lambda _: [container_command("tidal-executor")],
    "slurm": slurm_commands,
}


@pytest.mark.parametrize("where", COMMAND_LINES)
def test_every_command_line_in_deploy_uses_flags_tidal_has(where, tmp_path):
    for argv in COMMAND_LINES[where](tmp_path):
        parse_tidal(argv)
