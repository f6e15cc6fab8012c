"""Autoscaling clusters: trials ask for what they need and the autoscaler brings GPU nodes up from zero.

The slow tests run Ray's fake multi-node autoscaler (provider ``fake_multinode``, ``RAY_FAKE_CLUSTER=1``),
which launches and terminates real Ray nodes on this machine as a cloud would; the wheel does not ship its
example config, so the test writes one. Every Ray process a test starts is in one process group of its own
(``setsid``) with its own temp dir, and is ended by that group: never ``ray stop``, which would end every Ray
instance on the machine. The fast tests check the sizing and the driver's watchdog without a cluster.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from orchestrator.cli import UserError
from orchestrator.cluster import Capacity, NodeType, node_types_of, resolve, trials_per_gpu
from orchestrator.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
FAKE_HEAD_ID = "f" * 51 + "00000"  # the fake provider's deterministic node ids: head ...00000, workers ...00001, ...


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_config(gcs_address: str) -> dict:
    """A CPU-only head and a GPU node type with none up at the start, as cluster.yaml has."""
    return {
        "cluster_name": "adsweep-fake", "max_workers": 2, "idle_timeout_minutes": 5, "upscaling_speed": 1.0,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        **{k: [] for k in ("cluster_synced_files", "initialization_commands", "setup_commands",
                           "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                           "worker_start_ray_commands")},
        "file_mounts": {}, "file_mounts_sync_continuously": False,
    }


def our_processes(group: int, temp_dir: str) -> list[psutil.Process]:
    """The processes of the head this test started: its process group or its own temp dir on the command line,
    and their descendants (Ray's worker processes lead process groups of their own)."""
    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) == group or temp_dir in " ".join(proc.info.get("cmdline") or []):
                out[proc.pid] = proc
                out.update({c.pid: c for c in proc.children(recursive=True)})
        except (ProcessLookupError, psutil.Error):
            continue
    return list(out.values())


def raylets(temp_dir: str) -> dict[str, psutil.Process]:
    """node id -> raylet process, of this test's cluster only."""
    out = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if cmd and cmd[0].endswith("/raylet") and any(temp_dir in part for part in cmd):
            node = next((p.split("=", 1)[1] for p in cmd if p.startswith("--node_id=")), None)
            out[node] = proc
    return out


@contextlib.contextmanager
def ray_head(*args: str, env: dict, port: int | None = None):
    """`ray start --head` as this test's own process group and temp dir; stops only that group."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    port = port or _free_port()
    start = subprocess.Popen(
        [RAY, "start", "--head", "--port", str(port), "--temp-dir", temp_dir, "--disable-usage-stats",
         "--dashboard-agent-listen-port", str(_free_port()), "--ray-client-server-port", str(_free_port()), *args],
        env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    group = start.pid
    try:
        out, _ = start.communicate(timeout=180)
        assert start.returncode == 0, out
        yield {"port": port, "temp_dir": temp_dir, "group": group}
    finally:
        procs = our_processes(group, temp_dir)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)


def ray_env(**more) -> dict:
    """Token authentication with this test's own token (never the machine's ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **more)
    return env


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory):
    import ray._private.services

    ip = ray._private.services.get_node_ip_address()
    env = ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    config_path = tmp_path_factory.mktemp("fake") / "autoscaler.yaml"
    port = _free_port()  # the fake provider starts its nodes against this address: it is in the config
    config_path.write_text(yaml.safe_dump(fake_config(f"{ip}:{port}")))
    with ray_head("--num-cpus", "1", "--num-gpus", "0", "--include-dashboard", "false",
                  "--autoscaling-config", str(config_path), env=env, port=port) as head:
        yield {**head, "address": f"{ip}:{port}", "env": env, "config": config_path}


def sweep(cluster, store: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--storage", str(store), "--address",
         cluster["address"], *args], cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # about 1-2 min: the autoscaler launches fake GPU nodes, then 12 trials
def test_a_gpu_sweep_makes_the_autoscaler_launch_gpu_nodes_and_runs_only_on_them(fake_cluster, tmp_path):
    assert list(raylets(fake_cluster["temp_dir"])) == [FAKE_HEAD_ID]  # no GPU node up: only the CPU head
    store = tmp_path / "results"
    run = sweep(fake_cluster, store, "--methods", "iforest", "--normal-classes", "0,1", "--anomaly-classes", "2,3",
                "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5")
    assert run.returncode == 0, run.stdout + run.stderr
    # Sized from the node types the autoscaler can launch, not from the head alone: 2 nodes x 2 trials.
    assert "12 trials, 4 at a time" in run.stdout and "the autoscaler's node types" in run.stdout, run.stdout
    rows = pd.read_parquet(store)
    assert len(rows) == 12 and rows["trial_key"].is_unique and (rows["status"] == "ok").all()
    assert not (rows["node_id"] == FAKE_HEAD_ID).any()
    assert rows["node_id"].str.startswith("f" * 51).all()  # nodes the fake provider launched
    launched = [n for n in raylets(fake_cluster["temp_dir"]) if n != FAKE_HEAD_ID]
    # Every trial ran on a GPU node the autoscaler launched during this sweep, and it launched no more than the
    # node type's max_workers (2).
    assert set(rows["node_id"]) <= set(launched) and len(launched) <= 2, (launched, rows["node_id"].unique())
    # A share no node type can ever hold: one line, exit 2, before any trial.
    refused = sweep(fake_cluster, tmp_path / "refused", "--methods", "iforest", "--normal-classes", "0",
                    "--anomaly-classes", "1", "--gpus-per-trial", "2")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --gpus-per-trial 2: a trial needs")
    assert len(refused.stderr.strip().splitlines()) == 1 and not list((tmp_path / "refused").rglob("*.parquet"))
    monitor_log = next(Path(fake_cluster["temp_dir"]).glob("session_*/logs/monitor.log")).read_text()
    print(f"GPU nodes up: {launched}; trials per node: {rows['node_id'].value_counts().to_dict()}; "
          f"launches logged: {monitor_log.count('Adding ')}")


@pytest.mark.slow  # about 1 min: two search trials on the fake GPU nodes
def test_a_search_asks_for_the_gpu_share_a_sweep_would(fake_cluster, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("method: hscl\nparams: {tau: {type: float, low: 0.1, high: 0.5}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "orchestrator.search", "hscl", "--space", str(space), "--trials", "2", "--pairs", "0:1",
         "--set", "epochs=2", "--no-asha", "--max-concurrent", "1", "--search-dir", str(tmp_path / "search"),
         "--storage", str(tmp_path / "results"), "--address", fake_cluster["address"]],
        cwd=ROOT, env=fake_cluster["env"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    # No --gpus-per-trial: the sweep's default share (24 GiB assumed, 0.5 GiB a quick trial -> 8 per GPU).
    assert "1 CPU, 0.125 GPU per trial" in run.stdout, run.stdout
    rows = pd.read_parquet(tmp_path / "results")
    assert len(rows) == 2 and (rows["kind"] == "search").all() and (rows["status"] == "ok").all()
    # A trial that asked for no GPU would run on the idle CPU head (Ray keeps CPU work off GPU nodes).
    assert rows["node_id"].notna().all() and not (rows["node_id"] == FAKE_HEAD_ID).any()


def _running_trial_node(temp_dir: str) -> str | None:
    """A GPU node of this cluster on which a Tune trial is training right now."""
    for node, raylet in raylets(temp_dir).items():
        if node == FAKE_HEAD_ID:
            continue
        with contextlib.suppress(psutil.Error):
            if any("ImplicitFunc.train" in " ".join(c.cmdline()) for c in raylet.children(recursive=True)):
                return node
    return None


@pytest.mark.slow  # about 2-3 min: a GPU node is killed while its trial trains
def test_a_gpu_node_killed_mid_sweep_loses_no_row_and_writes_no_duplicate(fake_cluster, tmp_path):
    store = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "scenario2", "--methods", "hscl", "--normal-classes", "0,1",
         "--anomaly-classes", "2", "--set", "epochs=30", "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.5",
         "--storage", str(store), "--address", fake_cluster["address"]],
        cwd=ROOT, env=fake_cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        victim = None
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            victim = _running_trial_node(fake_cluster["temp_dir"])
            time.sleep(0.5)  # polling for the event (a trial training on a GPU node), not waiting it out
        assert victim, "no trial ever trained on a GPU node"
        before = set(ResultStore(str(store)).statuses())
        # The node dies without warning, as a lost machine does: its raylet and every process under it
        # (killing the raylet alone leaves its trial's process running for a while, finishing its trial).
        raylet = raylets(fake_cluster["temp_dir"])[victim]
        for node_proc in [*raylet.children(recursive=True), raylet]:
            with contextlib.suppress(psutil.Error):
                node_proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    rows = pd.read_parquet(store)
    assert len(rows) == 6 and rows["trial_key"].is_unique and (rows["status"] == "ok").all(), out
    rerun = rows[~rows["trial_key"].isin(before)]
    print(f"killed {victim} with {len(before)} rows stored; {len(rerun)} trials finished after, on "
          f"{rerun['node_id'].value_counts().to_dict()}")
    assert len(rerun) >= 1 and not (rerun["node_id"] == victim).any()  # in flight at the kill: finished elsewhere
    assert not (rows["node_id"] == FAKE_HEAD_ID).any()


@pytest.mark.slow  # about 1 min: the README's job recipe against this test's own head
def test_the_readme_job_recipe_runs_a_sweep_on_a_head_of_its_own(tmp_path):
    env = ray_env()
    dashboard = _free_port()
    store = tmp_path / "results"
    with ray_head("--num-cpus", "1", "--dashboard-port", str(dashboard), "--dashboard-host", "127.0.0.1", env=env):
        # As README.md says: the token travels in RAY_AUTH_TOKEN (or ~/.ray/auth_token) to `ray job submit`.
        run = subprocess.run(
            [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
             "python", "-m", "orchestrator.sweep", "scenario2", "--methods", "iforest", "--normal-classes", "0",
             "--anomaly-classes", "1", "--gamma-p", "0,0.1", "--storage", str(store)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        # The job's driver joined this head (1 CPU), not a Ray of its own (the machine's cores).
        assert "the cluster can grow to 1 CPUs" in run.stdout, run.stdout
        denied = subprocess.run([RAY, "job", "list", "--address", f"http://127.0.0.1:{dashboard}"], cwd=ROOT,
                                env={**env, "RAY_AUTH_TOKEN": "wrong" + secrets.token_hex(8)},
                                capture_output=True, text=True, timeout=120)
        assert denied.returncode != 0  # a wrong token is refused
    rows = pd.read_parquet(store)
    assert len(rows) == 2 and (rows["status"] == "ok").all()


# ----------------------------------------------------------------------------------------------
# Fast: sizing from node types, refusals, the driver's watchdog


def test_sizing_follows_the_node_types_the_autoscaler_can_launch():
    capacity = Capacity(node_types_of(fake_config("127.0.0.1:1")), "test")
    assert capacity.most("GPU") == 2 and capacity.most("CPU") == 3
    request, concurrent, _ = resolve(0.5, 0.5, 0, None, capacity, footprint_gib=0.5)
    assert request.tune_resources() == {"cpu": 0.5, "gpu": 0.5} and concurrent == 4  # 2 GPU nodes x 2
    request, concurrent, notes = resolve(1.0, None, 0, None, capacity, footprint_gib=9.0, card_gib=24.0)
    assert request.gpus == 0.5 and concurrent == 2 and "2 trials per GPU" in notes[0]  # 9 GiB on 24: 2 fit
    _, concurrent, _ = resolve(1.0, 0.5, 0, 1, capacity, footprint_gib=1)
    assert concurrent == 1  # --max-concurrent wins when lower
    # No GPU node type: a CPU sweep asks for no GPU and fits the CPU nodes.
    cpu_only = Capacity([NodeType("head", {"CPU": 2}, 1)], "test")
    assert resolve(1.0, None, 0, None, cpu_only, footprint_gib=1)[0].gpus == 0


@pytest.mark.parametrize("cpus, gpus, flag", [(1.0, 2.0, "--gpus-per-trial 2"), (4.0, 0.5, "--cpus-per-trial 4")])
def test_a_request_no_node_type_can_satisfy_is_one_line(cpus, gpus, flag):
    capacity = Capacity(node_types_of(fake_config("127.0.0.1:1")), "the autoscaler's node types (test)")
    with pytest.raises(UserError, match=flag) as info:
        resolve(cpus, gpus, 0, None, capacity, footprint_gib=1)
    assert "\n" not in str(info.value) and "can ever offer" in str(info.value)
    # Node types not readable from here: accepted, with a note.
    unknown = Capacity([NodeType("head", {"CPU": 1}, 1)], "test", known=False)
    _, _, notes = resolve(cpus, gpus, 0, None, unknown, footprint_gib=1)
    assert any("wait until a node that fits joins" in n for n in notes)


def test_trials_per_gpu_from_card_memory_and_footprint():
    assert trials_per_gpu(24, 9) == 2 and trials_per_gpu(24, 12) == 1 and trials_per_gpu(80, 9) == 8
    assert trials_per_gpu(16, 20) == 1  # never zero: one trial per GPU, capped at the whole card


def test_the_shipped_cluster_configs_pass_rays_schema_and_declare_gpu_nodes():
    from ray.autoscaler._private.util import prepare_config, validate_config

    for name in ("cluster.yaml", "cluster-local.yaml"):
        config = yaml.safe_load((ROOT / name).read_text())
        validate_config(prepare_config(config))  # raises on a bad config
        assert any("ray[default]" in c or ".[cluster]" in c for c in config["setup_commands"]), name
    aws = Capacity(node_types_of(yaml.safe_load((ROOT / "cluster.yaml").read_text())), "cluster.yaml")
    assert aws.most("GPU") >= 1
    assert resolve(1.0, 0.5, 0, None, aws, footprint_gib=9)[1] >= 2  # GPU trials possible with no GPU node up


def test_the_driver_goes_on_when_the_store_is_complete_but_ray_does_not_return(tmp_path):
    from orchestrator.sweep import Progress, wait_for_fit

    store = ResultStore(str(tmp_path / "results"))
    keys = {"k1", "k2"}
    never = threading.Event()
    hung = threading.Thread(target=never.wait, daemon=True)  # a fit() that never returns
    hung.start()
    progress = Progress(2)
    for key in sorted(keys):
        store.write({"trial_key": key, "profile": "quick", "scenario": "scenario2", "method": "iforest",
                     "status": "ok"})
        progress.update(ok=1, failed=0)
    assert wait_for_fit(hung, store, keys, progress, grace_s=0.5, poll_s=0.1, store_every_s=0.1) is True
    returns = threading.Thread(target=lambda: None)
    returns.start()
    assert wait_for_fit(returns, store, keys, progress, grace_s=0.5, poll_s=0.1) is False
    never.set()


def test_an_out_of_memory_trial_is_told_to_raise_gpus_per_trial():
    import torch

    from orchestrator.runner import Context, cap_gpu_memory, gpu_oom, oom_message

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("the training worker failed") from inner  # as Ray Train wraps a worker's error
    except RuntimeError as wrapped:
        assert gpu_oom(wrapped)
    assert not gpu_oom(ValueError("diverged"))
    message = oom_message(Context(storage="x", gpus_per_trial=0.25))
    assert "--gpus-per-trial 0.25" in message and "--gpus-per-trial 0.5" in message
    assert "--gpus-per-trial 0.5" in oom_message(Context(storage="x", gpus_per_trial=0.0))
    if not torch.cuda.is_available():
        assert cap_gpu_memory(0.5) is None  # no GPU here: nothing to cap


def test_the_default_share_uses_the_footprint_gpu_rows_measured(tmp_path):
    from orchestrator.sweep import measured_footprint

    store = ResultStore(str(tmp_path / "results"))
    assert measured_footprint(store, "paper", ["hscl"]) is None
    for key, peak, status in (("a", 7.5, "ok"), ("b", 10.5, "ok"), ("c", 30.0, "failed")):
        store.write({"trial_key": key, "profile": "paper", "scenario": "scenario2", "method": "hscl",
                     "status": status, "extra": {"gpu_peak_gib": peak}})
    assert measured_footprint(store, "paper", ["hscl"]) == 10.5  # the largest ok peak; failed rows do not count
    assert measured_footprint(store, "paper", ["csi"]) is None
    assert trials_per_gpu(24, 10.5) == 2 and trials_per_gpu(24, 11) == 1
