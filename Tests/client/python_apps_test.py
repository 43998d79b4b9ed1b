"""Apps defined as Python classes, with the original Balsam client, against our server and a real site.

Run by ServerTests (PythonAppTests.swift) while the site's balsam-watch (with its sync service) and a loop of short
launchers run (each ends after about ten seconds, so a long job times out):

    BALSAM_TEST_SERVER=http://127.0.0.1:PORT BALSAM_TEST_TOKEN=... BALSAM_TEST_SITE=NAME python python_apps_test.py

Prints "CHECK name ..." lines for what it verified and "JOB name site_job_id" lines for the Swift test to look
at the site; exits 0 only if every check held.
"""

import os
import sys
import tempfile
import time

URL = os.environ["BALSAM_TEST_SERVER"]
SITE = os.environ["BALSAM_TEST_SITE"]
directory = tempfile.mkdtemp(prefix="balsam-pyapps-")
with open(os.path.join(directory, "client.yml"), "w") as f:
    f.write(
        f"api_root: {URL}\nclient_class: balsam.client.BasicAuthRequestsClient\n"
        f"token: {os.environ['BALSAM_TEST_TOKEN']}\nretry_count: 0\n"
    )
os.environ["BALSAM_CLIENT_PATH"] = os.path.join(directory, "client.yml")
# A module only this side has: its class is pickled by reference, and the site cannot load it.
with open(os.path.join(directory, "userlib_only_here.py"), "w") as f:
    f.write(
        "import os\n"
        "from balsam.api import ApplicationDefinition\n"
        "class Orphan(ApplicationDefinition):\n"
        f"    site = {SITE!r}\n"
        "    def run(self):\n"
        "        return 1\n"
    )
sys.path.insert(0, directory)

import numpy as np  # noqa: E402
from balsam.api import ApplicationDefinition, EventLog, Job  # noqa: E402
from userlib_only_here import Orphan  # noqa: E402


def check(name, condition, detail=""):
    print("CHECK", name, "ok" if condition else "FAILED", detail, flush=True)
    if not condition:
        sys.exit(1)


def wait_state(job, states, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job.refresh_from_db()
        if job.state in states:
            return job.state
        time.sleep(0.3)
    return job.state


def transitions(job):
    return [(e.from_state, e.to_state) for e in EventLog.objects.filter(job_id=job.id).order_by("timestamp")]


class Hello(ApplicationDefinition):
    """The seed's Hello; its first run outlives its launcher, so it times out once."""

    site = SITE
    command_template = "test -e first-run || { touch first-run; sleep 300; }; echo hello {{ name }}"

    def handle_timeout(self):
        self.job.state = "RESTART_READY"


class Flaky(ApplicationDefinition):
    site = SITE
    command_template = "echo attempt {{ n }}; exit 3"

    def handle_error(self):
        if self.job.data.get("retried"):
            self.job.state = "FAILED"
        else:
            self.job.data["retried"] = True
            self.job.state = "RESTART_READY"


class Twice(ApplicationDefinition):
    """A shell app whose first run fails and second succeeds: no exception is left from the first."""

    site = SITE
    command_template = "test -e first-run || { touch first-run; echo first run broke; exit 4; }; echo fine"

    def handle_error(self):
        self.job.state = "RESTART_READY"


class MyApp(ApplicationDefinition):
    site = SITE

    def run(self, vec):
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        print("Hello from rank", rank)
        return np.linalg.norm(vec)


class Raiser(ApplicationDefinition):
    site = SITE

    def run(self, message):
        raise ValueError(message)


class Rank(ApplicationDefinition):
    site = SITE

    def run(self):
        from mpi4py import MPI

        return MPI.COMM_WORLD.Get_rank()


class Sleeper(ApplicationDefinition):
    site = SITE

    def run(self, seconds):
        import time

        print("sleeping", flush=True)
        time.sleep(seconds)


class Crasher(ApplicationDefinition):
    site = SITE

    def run(self, how):
        import ctypes
        import os

        if how == "segv":
            ctypes.string_at(0)
        os._exit(7)


class BadHook(ApplicationDefinition):
    site = SITE
    command_template = "echo never"

    def preprocess(self):
        raise RuntimeError("the preprocess hook broke")


class Preamble(ApplicationDefinition):
    site = SITE
    command_template = "echo $GREETING {{ name }}"

    def shell_preamble(self):
        return ["export GREETING=salut", "echo preamble ran"]


class Warm(ApplicationDefinition):
    site = SITE
    command_template = "echo warm"

    def preprocess(self):
        # Which process ran this call: the watcher's warm hook server forks one child per call.
        with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
            self.job.data["hook_parent"] = f.read().replace(b"\0", b" ").decode()


class Stuck(ApplicationDefinition):
    site = SITE
    command_template = "echo never"

    def preprocess(self):
        import time

        time.sleep(600)


class Staged(ApplicationDefinition):
    """Transfer slots and cleanup_files, defined here only: the site gets them with the class (issue 34, item 4)."""

    site = SITE
    command_template = "cat inp.txt; echo scratch > scratch.tmp"
    transfers = {
        "inp": {"required": True, "direction": "in", "local_path": "inp.txt", "description": "the input"},
    }
    cleanup_files = ["*.tmp"]


class Plus(ApplicationDefinition):
    site = SITE

    def run(self, x):
        return x + 1


hello = Hello.submit(workdir="py/hello", name="world!")
flaky = Flaky.submit(workdir="py/flaky", n=1)
twice = Twice.submit(workdir="py/twice")
vecs = [np.random.rand(3) for _ in range(10)]
jobs = [MyApp.submit(workdir=f"test/{i}", vec=vecs[i], ranks_per_node=4, gpus_per_rank=0) for i in range(10)]
raiser = Raiser.submit(workdir="py/raiser", message="no such thing as a free lunch")
rank = Rank.submit(workdir="py/rank", ranks_per_node=2)
orphan = Orphan.submit(workdir="py/orphan")
sleeper = Sleeper.submit(workdir="py/sleeper", seconds=300)
segv = Crasher.submit(workdir="py/segv", how="segv")
exits = Crasher.submit(workdir="py/exit", how="exit")
badhook = BadHook.submit(workdir="py/badhook")
preamble = Preamble.submit(workdir="py/preamble", name="monde")
warm = Warm.submit(workdir="py/warm")
stuck = Stuck.submit(workdir="py/stuck")
staged = Staged.submit(workdir="py/staged", transfers={"inp": "here:" + os.environ["BALSAM_TEST_INPUT"]})
for name, job in [("hello", hello), ("flaky", flaky), ("sleeper", sleeper), ("myapp0", jobs[0]), ("segv", segv)]:
    print("JOB", name, job.id, flush=True)

# The seed's loop: ten norms, each numpy's own.
by_id = {job.id: i for i, job in enumerate(jobs)}
seen = 0
for job in Job.objects.as_completed(jobs, timeout=300, poll_interval=0.5):
    i = by_id[job.id]
    value = job.result()
    print(job.workdir, value, flush=True)
    check("norm", abs(value - np.linalg.norm(vecs[i])) < 1e-12, f"{value} vs {np.linalg.norm(vecs[i])}")
    seen += 1
check("myapp-all", seen == 10, str(seen))

try:
    raiser.result(timeout=120)
    check("raise", False, "no exception")
except ValueError as exc:
    check("raise", str(exc) == "no such thing as a free lunch", repr(exc))

check("rank0", rank.result(timeout=120) == 0)

check("orphan", wait_state(orphan, ["FAILED", "JOB_FINISHED"]) == "FAILED", orphan.state)
try:
    orphan.result_nowait()
    check("orphan-raises", False, "no exception")
except ModuleNotFoundError as exc:
    check("orphan-raises", "userlib_only_here" in str(exc), repr(exc))
reasons = [str(e.data) for e in EventLog.objects.filter(job_id=orphan.id)]
check("orphan-reason", any("userlib_only_here" in r for r in reasons), str(reasons))

# A kill of a job running in a warm worker, asked for from here.
check("sleeper-running", wait_state(sleeper, ["RUNNING"]) == "RUNNING", sleeper.state)
time.sleep(0.5)  # its output says it started
sleeper.state = "FAILED"
sleeper.save()
check("sleeper-killed", wait_state(sleeper, ["FAILED"], timeout=60) == "FAILED", sleeper.state)

check("segv", wait_state(segv, ["FAILED"]) == "FAILED", segv.state)
check("exit", wait_state(exits, ["FAILED"]) == "FAILED", exits.state)
check("exit-code", exits.return_code == 7, str(exits.return_code))
# The workers go on: a job after the crashes and the kill gets its answer.
check("plus", Plus.submit(workdir="py/plus", x=41).result(timeout=120) == 42)

check("badhook", wait_state(badhook, ["FAILED", "JOB_FINISHED"]) == "FAILED", badhook.state)
reasons = [str(e.data) for e in EventLog.objects.filter(job_id=badhook.id)]
check("badhook-reason", any("the preprocess hook broke" in r for r in reasons), str(reasons))
check("preamble", wait_state(preamble, ["FAILED", "JOB_FINISHED"]) == "JOB_FINISHED", preamble.state)
# Class hooks run in the watcher's warm hook server; one past the site's hook time limit (5 s here) is stopped.
check("warm", wait_state(warm, ["FAILED", "JOB_FINISHED"]) == "JOB_FINISHED", warm.state)
warm.refresh_from_db()
check("warm-server", "balsam_runner.py hooks" in warm.data.get("hook_parent", ""), str(warm.data))
check("stuck", wait_state(stuck, ["FAILED", "JOB_FINISHED"], timeout=120) == "FAILED", stuck.state)
reasons = [str(e.data) for e in EventLog.objects.filter(job_id=stuck.id)]
check("stuck-reason", any("did not finish within 5 s" in r for r in reasons), str(reasons))

check(
    "staged",
    wait_state(staged, ["FAILED", "JOB_FINISHED"]) == "JOB_FINISHED",
    str([str(e.data) for e in EventLog.objects.filter(job_id=staged.id)]),
)

check("flaky", wait_state(flaky, ["FAILED", "JOB_FINISHED"]) == "FAILED", flaky.state)
steps = transitions(flaky)
check(
    "flaky-once",
    steps.count(("RUN_ERROR", "RESTART_READY")) == 1 and steps.count(("RUN_ERROR", "FAILED")) == 1,
    str(steps),
)
check("flaky-data", flaky.data.get("retried") is True, str(flaky.data))
# A shell app's failure reaches job.result(): why, and the last lines of its output.
try:
    flaky.result_nowait()
    check("flaky-result", False, "no exception")
except RuntimeError as exc:
    check("flaky-result", "exit status 3" in str(exc) and "attempt 1" in str(exc), repr(exc))
check("twice", wait_state(twice, ["FAILED", "JOB_FINISHED"]) == "JOB_FINISHED", twice.state)
try:
    twice.result_nowait()
    check("twice-result", False, "a result")
except Job.NoResult:
    pass
except RuntimeError as exc:
    check("twice-result", False, "the failed run's exception was left: " + repr(exc))

check("hello", wait_state(hello, ["JOB_FINISHED", "FAILED"], timeout=300) == "JOB_FINISHED", hello.state)
steps = transitions(hello)
check("hello-timeout", ("RUN_TIMEOUT", "RESTART_READY") in steps, str(steps))
print("python apps: every check held")
sys.exit(0)
