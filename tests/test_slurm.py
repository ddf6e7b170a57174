"""examples/farm/slurm_array.sh submitted to a real Slurm: a one-node cluster (Debian's slurm-wlm and
munge, installed when missing) started for this module, an array of two videos that must each end in
a complete project, and a task requeued during training that must continue from its checkpoint."""

import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import pytest
from conftest import run_cli

from vid3d.scenes import make_scene, orbit_cameras, render
from vid3d.splats.results import read_history

pytestmark = pytest.mark.slow  # starts Slurm's daemons and trains through the farm script

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "farm" / "slurm_array.sh"
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
# A short training and a coarse, small mesh: each task takes about 30 s on one core.
FARM_TOML = """
[splats]
steps = 120
checkpoint_every = 40
densify = false
sh_degree = 1

[export]
texture_size = 256
faces = 2000
voxel_size = 0.1
"""
REQUEUE_STEPS, REQUEUE_EVERY = 1000, 100  # the requeued task trains longer, to be stopped mid-way
STAGES = ("frames", "poses", "splats", "export")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def ensure_slurm(path: str) -> None:
    """Install slurm-wlm and munge as .ci/run installs chromium; skip only where that cannot work."""
    if os.geteuid() != 0:
        pytest.skip("Slurm's daemons run jobs as root here: run as root (or on CI)")
    if shutil.which("slurmctld", path=path) and shutil.which("munged", path=path):
        return
    if not shutil.which("apt-get", path=path):
        pytest.skip("slurmctld is not installed and there is no apt-get to install slurm-wlm and munge")
    install = subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null",
        shell=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        check=False,
    )
    if install.returncode != 0 or not shutil.which("slurmctld", path=path):
        pytest.skip(f"could not install slurm-wlm and munge with apt-get: {install.stderr.strip()[-500:]}")


def free_ports(count: int) -> list[int]:
    """Ports no one listens on, so that the test's daemons never meet another Slurm's."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def slurm_conf(state: Path, munge_socket: Path, node_line: str) -> str:
    host = node_line.split()[0].split("=", 1)[1]  # slurmd -C: NodeName=`hostname -s` CPUs=... RealMemory=...
    ctld_port, slurmd_port = free_ports(2)
    return f"""
ClusterName=vid3dtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long (120 s by default) before it may start again
AuthInfo=socket={munge_socket},cred_expire=15
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobRequeue=1
{node_line} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def wait_until(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Cluster:
    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)

    def daemon_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))

    def submit(self, videos: Path, out: Path, flags: str, tasks: str) -> str:
        """sbatch the farm script as a CPU partition needs it (no GPU, one core a task); the job id.
        Each task's log goes to out's parent (Slurm does not make the folder of --output)."""
        result = subprocess.run(
            ["sbatch", "--parsable", "--gres=none", "--cpus-per-task=1", f"--array={tasks}"]
            + [f"--output={out.parent}/slurm-%A_%a.out", str(SCRIPT), str(videos), str(out)],
            env={**self.env, "VID3D_FLAGS": flags},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr + self.daemon_logs()
        return result.stdout.strip().split(";")[0]

    def tasks(self, job: str) -> dict[str, dict[str, str]]:
        """Each array task of `job` (from slurmctld, as there is no accounting database): its fields."""
        lines = self.run("scontrol", "-o", "show", "job", job).stdout.splitlines()
        fields = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines if line.strip()]
        return {f.get("ArrayTaskId", ""): f for f in fields}

    def wait_finished(self, job: str, count: int, timeout: float, restarts: int = 0) -> dict[str, dict[str, str]]:
        def finished():
            tasks = self.tasks(job)
            done = all(t["JobState"] in FINISHED and int(t["Restarts"]) >= restarts for t in tasks.values())
            return tasks if len(tasks) == count and done else None

        return wait_until(finished, timeout, f"job {job} to finish", interval=2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd on this machine, all files in temporary folders; stopped at the end."""
    path = f"{os.environ.get('PATH', '')}:{SBIN}"
    ensure_slurm(path)
    logs = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "PATH": path, "SLURM_CONF": str(logs / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    env["VID3D"] = str(Path(sys.executable).with_name("vid3d"))  # the venv's, as the tests run it
    node = subprocess.run(["slurmd", "-C"], env=env, capture_output=True, text=True, check=True).stdout
    # munged wants every folder above its socket searchable by all (pytest's folders are private)
    private = Path(tempfile.mkdtemp(prefix="vid3d-slurm-"))
    private.chmod(0o755)
    key = private / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    for folder in ("ctld", "spool"):
        (logs / folder).mkdir()
    (logs / "slurm.conf").write_text(slurm_conf(logs, private / "munge.socket", node.splitlines()[0]))
    munged = ["munged", "-F", f"--socket={private}/munge.socket", f"--key-file={key}"]
    munged += [
        f"--pid-file={private}/munged.pid",
        f"--seed-file={private}/munged.seed",
        f"--log-file={logs}/munged.log",
    ]
    daemons: list[subprocess.Popen] = []
    cluster = Cluster(env, logs)

    def start(*command: str) -> None:
        with open(logs / f"{command[0]}.out", "w") as out:  # the daemon keeps its own copy of the file
            daemons.append(
                subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )

    try:
        start(*munged)
        wait_until(lambda: (private / "munge.socket").exists(), 30, "munged's socket")
        start("slurmctld", "-D")
        wait_until(lambda: cluster.run("scontrol", "ping").returncode == 0, 60, "slurmctld")
        start("slurmd", "-D")
        wait_until(lambda: cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60, "the node to be idle")
        yield cluster
    finally:
        # no job outlives the test: cancel them all, wait until slurmd has cleaned up, then stop the daemons
        if len(daemons) == 3:
            cluster.run("scancel", "--quiet", f"--user={getpass.getuser()}")
            try:
                wait_until(lambda: not cluster.run("squeue", "-h").stdout.strip(), 90, "cancelled jobs to end")
            except AssertionError:
                pass
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two short orbits of procedural scenes (32 frames of 128 px: COLMAP registers them in seconds)."""
    root = tmp_path_factory.mktemp("clips")
    for name, seed in (("alpha", 3), ("beta", 5)):
        images = render(make_scene(seed), orbit_cameras(32, width=128, height=128)).images
        iio.imwrite(root / f"{name}.mp4", images, plugin="FFMPEG", fps=12, codec="libx264", quality=9)
    (root / "farm.toml").write_text(FARM_TOML)
    return root


def task_log(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(out.parent.glob("slurm-*.out")))


def assert_complete(project: Path, steps: int) -> dict:
    """Every stage complete with its outputs intact, and the farm script's result files saying so."""
    manifest = json.loads((project / "manifest.json").read_text())
    status = run_cli("status", project, "--json")
    assert status.returncode == 0, status.stderr
    stages = json.loads(status.stdout)["stages"]
    for stage in STAGES:
        assert stages[stage]["status"] == "complete", (stage, stages[stage])
        assert manifest["stages"][stage]["outputs"]
        for output in manifest["stages"][stage]["outputs"]:
            assert (project / output).exists(), output
    assert "checkpoint" not in stages["splats"] and not list(project.glob(".resume/*"))
    assert manifest["stages"]["splats"]["metrics"]["steps"] == steps  # VID3D_FLAGS reached vid3d
    assert (project / "export" / "mesh.glb").stat().st_size > 0 and (project / "export" / "splat.ply").is_file()
    for step in ("poses", "splats", "export"):
        assert json.loads(project.with_name(f"{project.name}.{step}.json").read_text())["status"] == "ok"
    return manifest


def test_array_job_completes_every_project(cluster, inputs, tmp_path):
    out = tmp_path / "projects"  # not there yet: the script makes it
    videos = tmp_path / "videos.txt"
    videos.write_text(f"{inputs / 'alpha.mp4'}\n{inputs / 'beta.mp4'}\n")
    job = cluster.submit(videos, out, f"--config {inputs / 'farm.toml'}", "1-2")
    tasks = cluster.wait_finished(job, 2, timeout=420)
    log = task_log(out)
    assert {t["JobState"] for t in tasks.values()} == {"COMPLETED"}, log + cluster.daemon_logs()
    assert set(tasks) == {"1", "2"}
    for name in ("alpha", "beta"):
        manifest = assert_complete(out / name, steps=120)
        assert manifest["stages"]["export"]["metrics"]["mesh_faces"] <= 2000


def test_requeued_task_resumes_training_from_its_checkpoint(cluster, inputs, tmp_path):
    out = tmp_path / "projects"
    video = tmp_path / "requeued.mp4"
    shutil.copy(inputs / "alpha.mp4", video)
    videos = tmp_path / "videos.txt"
    videos.write_text(f"{video}\n")
    flags = f"--config {inputs / 'farm.toml'} --set splats.steps={REQUEUE_STEPS}"
    job = cluster.submit(videos, out, f"{flags} --set splats.checkpoint_every={REQUEUE_EVERY}", "1")
    project = out / "requeued"

    def training_checkpointed():
        for progress in project.glob(".resume/splats-*/progress.json"):
            if json.loads(progress.read_text())["step"] >= REQUEUE_EVERY:
                return True
        assert cluster.tasks(job).get("1", {}).get("JobState") not in FINISHED, task_log(out)
        return False

    wait_until(training_checkpointed, 300, "the first checkpoint of training", interval=0.3)
    # requeue: Slurm sends SIGTERM to the running step (vid3d itself) and to the batch script, then
    # runs the script again from the top
    requeue = cluster.run("scontrol", "requeue", f"{job}_1")
    assert requeue.returncode == 0, requeue.stderr
    tasks = cluster.wait_finished(job, 1, timeout=420, restarts=1)
    log = task_log(out)
    assert tasks["1"]["JobState"] == "COMPLETED" and tasks["1"]["Restarts"] == "1", log
    assert "(run 1)" in log and "(run 2)" in log  # --open-mode=append kept the first run's lines

    # SIGTERM reached vid3d inside the srun step: it saved a checkpoint mid-training, and the rerun
    # continued from that very step instead of step 0
    saved = int(re.search(r"splats: saved a checkpoint at step (\d+)", log)[1])
    resumed = int(re.search(r"splats: resuming from the checkpoint at step (\d+)", log)[1])
    assert REQUEUE_EVERY <= saved == resumed < REQUEUE_STEPS, log
    assert "error: interrupted; rerun the same command" in log  # vid3d's SIGTERM exit (143), not a kill
    assert log.index("saved a checkpoint") < log.index("(run 2)") < log.index("resuming from the checkpoint")
    assert f"resuming from the checkpoint at step {resumed}" in (project / "logs" / "vid3d.log").read_text()
    assert_complete(project, steps=REQUEUE_STEPS)
    history = read_history(project / "splats")
    assert history["step"].tolist() == list(range(1, REQUEUE_STEPS + 1))  # each step trained once
    # the second run's poses step found its stage cached
    poses = json.loads(out.joinpath("requeued.poses.json").read_text())
    assert poses["stages"]["poses"]["status"] == "cached"


def test_generation_spread_over_ranks_by_the_slurm_script_matches_one_process(cluster, tmp_path):
    """examples/farm/slurm_generate.sh: srun starts torchrun, whose two ranks (gloo on this CPU) meet
    through the c10d rendezvous; the frames are those of one process."""
    reference = Path(__file__).resolve().parents[1] / "examples" / "reference.png"
    flags = ["--frames", "16", "--set", "generate.steps=4", "--set", "generate.stride=1"]
    one = subprocess.run(
        [sys.executable, "-m", "vid3d", "generate", str(tmp_path / "one"), "--image", str(reference), *flags],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert one.returncode == 0, one.stderr
    script = SCRIPT.with_name("slurm_generate.sh")
    env = {**cluster.env, "GPUS_PER_NODE": "2", "RDZV_PORT": str(free_ports(1)[0])}
    env["TORCHRUN"] = str(Path(sys.executable).with_name("torchrun"))
    submit = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", f"--output={tmp_path}/slurm-%j.out"]
        + [str(script), str(tmp_path / "spread"), str(reference), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert submit.returncode == 0, submit.stderr + cluster.daemon_logs()
    job = submit.stdout.strip().split(";")[0]
    tasks = cluster.wait_finished(job, 1, timeout=300)
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert tasks[""]["JobState"] == "COMPLETED", log
    manifest = json.loads((tmp_path / "spread" / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["metrics"]["ranks"] == 2
    frames = {p.name: p.read_bytes() for p in sorted((tmp_path / "one" / "generate" / "frames").glob("*.png"))}
    spread = {p.name: p.read_bytes() for p in sorted((tmp_path / "spread" / "generate" / "frames").glob("*.png"))}
    assert len(frames) == 16 and spread == frames
