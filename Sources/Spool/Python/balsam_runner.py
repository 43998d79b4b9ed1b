"""Balsam for Swift: the site's Python runner for apps defined as Python classes.

Written by the site into SITE/lib/balsam_runner.py (the copy inside the Balsam binaries is the source); run by the
site's Python, which needs `dill` and the original client package `balsam` (the pickled class refers to
`balsam._api.app.ApplicationDefinition`). Modes:

    balsam_runner.py check               say whether dill and balsam import here (exit 0), or what is missing (3)
    balsam_runner.py run                 run the job in the current directory: the class's run(**parameters)
    balsam_runner.py hook METHOD         call preprocess / postprocess / handle_error / handle_timeout for the job
                                         in the current directory; write $BALSAM_HOOK_RESULT
    balsam_runner.py preamble            print the class's shell_preamble() as shell text
    balsam_runner.py serve PARENT GRACE  a warm worker: forks a child per job (see balsam-launcher(1))
    balsam_runner.py hooks PARENT        the watcher's warm hook server: forks a child per class hook call

The job is described by job.json (and `state`) in its directory, BALSAM_SITE and BALSAM_APP: the class is
SITE/apps/APP/class.b64, base64 of dill.dumps(cls), as the original client sends it.
"""

import base64
import json
import os
import signal
import sys
import traceback

RESULT_NAME = ".balsam-result.json"
MISSING_EXIT = 3


def fail(message, status=MISSING_EXIT):
    sys.stderr.write("balsam_runner: " + message + "\n")
    sys.stderr.flush()
    os._exit(status)


def need_modules():
    missing = []
    try:
        import dill  # noqa: F401
    except ImportError:
        missing.append("dill")
    try:
        import balsam._api.app  # noqa: F401
    except ImportError as exc:
        missing.append("balsam (the original client, pip install balsam==0.7.0a24: %s)" % exc)
    if missing:
        fail(
            "the site's Python (%s) lacks %s; install it there, or set python.executable in settings.yml "
            "(or python_executable in the app's app.yml) to a Python that has it" % (sys.executable, " and ".join(missing))
        )


class SiteJob:
    """What `self.job` is for a class's methods at this site: the job's fields, its parameters, and the state and
    data the method sets (written back through the hook protocol)."""

    def __init__(self, spec, state, directory):
        self._spec = spec
        # The server's id of a job made through the API (server_id; data.balsam_server_id before issue #34).
        self.id = spec.get("server_id") or (spec.get("data") or {}).get("balsam_server_id", spec.get("id"))
        self.site_job_id = spec.get("id")
        self.workdir = spec.get("workdir")
        self.app = spec.get("app")
        self.tags = dict(spec.get("tags") or {})
        self.data = dict(spec.get("data") or {})
        self.parameters = dict(spec.get("parameters") or {})
        self.serialized_parameters = spec.get("serialized_parameters") or ""
        self.num_nodes = spec.get("num_nodes", 1)
        self.ranks_per_node = spec.get("ranks_per_node", 1)
        self.threads_per_rank = spec.get("threads_per_rank", 1)
        self.threads_per_core = spec.get("threads_per_core", 1)
        self.gpus_per_rank = spec.get("gpus_per_rank", 0)
        self.node_packing_count = spec.get("node_packing_count", 1)
        self.wall_time_min = spec.get("wall_time_min", 0)
        self.launch_params = dict(spec.get("launch_params") or {})
        self.parent_ids = list(spec.get("parent_ids") or [])
        self.state = state.get("state")
        self.return_code = state.get("return_code")
        self.state_data = {}
        self.directory = directory

    def get_parameters(self):
        if self.serialized_parameters:
            import dill

            return dill.loads(base64.b64decode(self.serialized_parameters))
        return dict(self.parameters)

    def resolve_workdir(self, data_path=None):
        from pathlib import Path

        return Path(self.directory)

    def __repr__(self):
        return "SiteJob(id=%r, workdir=%r, state=%r)" % (self.id, self.workdir, self.state)


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def load_job(directory, with_state=True):
    spec = read_json(os.path.join(directory, "job.json"))
    # The state file is the job's history, a JSON object per line: the last one is now.
    state = {}
    try:
        if not with_state:
            raise FileNotFoundError
        with open(os.path.join(directory, "state"), "rb") as f:
            lines = [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
        if lines:
            state = json.loads(lines[-1])
    except (OSError, ValueError):
        pass
    if os.environ.get("BALSAM_STATE"):
        state["state"] = os.environ["BALSAM_STATE"]
    return SiteJob(spec, state, directory)


_classes = {}


def class_path(app, site=None):
    site = site or os.environ.get("BALSAM_SITE")
    if not site:
        raise RuntimeError("BALSAM_SITE is not set: the runner cannot find app %s's class" % app)
    return os.path.join(site, "apps", app, "class.b64")


def load_class(app, site=None):
    """The app's class, unpickled once per process (and per change of its file)."""
    path = class_path(app, site)
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    cls = _classes.get(key)
    if cls is None:
        import dill

        with open(path, "rb") as f:
            text = f.read()
        try:
            cls = dill.loads(base64.b64decode(text))
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "cannot load app %s's class here: no module named %r at the site (its Python: %s)"
                % (app, exc.name, sys.executable),
                name=exc.name,
            ) from exc
        _classes[key] = cls
    return cls


def mpi_rank():
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "PALS_RANKID", "MPI_RANK"):
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                pass
    mpi = getattr(sys.modules.get("mpi4py"), "MPI", None)
    if mpi is not None:
        try:
            return mpi.COMM_WORLD.Get_rank()
        except Exception:
            pass
    return 0


def write_atomically(path, payload):
    # Not fsynced: the launcher reads it as soon as the run ends and logs it with the job's event, durably.
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(json.dumps(payload))
    os.rename(tmp, path)


def set_environment(env):
    """Makes os.environ equal `env`, touching only what differs (jobs differ in a few variables)."""
    current = os.environ
    for key in [key for key in current if key not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


def run_job(directory):
    """Runs the job in `directory`; returns the exit status (0: run() returned; 1: it raised)."""
    result_path = os.path.join(directory, RESULT_NAME)
    rank = mpi_rank()
    if rank == 0:
        try:
            os.unlink(result_path)
        except FileNotFoundError:
            pass
    try:
        job = load_job(directory, with_state=False)
        job.state = "RUNNING"
        cls = load_class(job.app)
        params = job.get_parameters()
        app = cls(job)
        if not callable(getattr(app, "run", None)):
            raise AttributeError("app %s has no run() method" % job.app)
        value = app.run(**params)
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        if rank == 0:
            write_atomically(result_path, exception_payload(exc))
        return 1
    if rank == 0:
        import dill

        try:
            encoded = base64.b64encode(dill.dumps(value, recurse=True)).decode("ascii")
        except Exception as exc:
            traceback.print_exc()
            write_atomically(result_path, exception_payload(exc))
            return 1
        write_atomically(result_path, {"serialized_return_value": encoded})
    sys.stdout.flush()
    return 0


def exception_payload(exc):
    payload = {"exception": "%s: %s" % (type(exc).__name__, exc)}
    try:
        import dill

        try:
            from tblib import Traceback

            tb = Traceback(exc.__traceback__)
        except Exception:
            tb = None
        payload["serialized_exception"] = base64.b64encode(dill.dumps((exc, tb), recurse=True)).decode("ascii")
    except Exception as ser_exc:
        payload["serialization_error"] = "%s: %s" % (type(ser_exc).__name__, ser_exc)
    return payload


HOOK_METHODS = {
    "preprocess": "preprocess",
    "postprocess": "postprocess",
    "on-error": "handle_error",
    "on-timeout": "handle_timeout",
    "handle_error": "handle_error",
    "handle_timeout": "handle_timeout",
}


def state_name(value):
    return getattr(value, "value", value)


def run_hook(directory, hook):
    method = HOOK_METHODS.get(hook)
    if method is None:
        fail("unknown hook %r" % hook, 2)
    result_path = os.environ.get("BALSAM_HOOK_RESULT")
    job = load_job(directory)
    before_state = job.state
    before_data = json.dumps(job.data, sort_keys=True, default=str)
    try:
        cls = load_class(job.app)
        app = cls(job)
        getattr(app, method)()
    except Exception as exc:
        traceback.print_exc()
        payload = {"state": "FAILED", "reason": "%s raised %s: %s" % (method, type(exc).__name__, exc)}
    else:
        payload = {}
        state = state_name(job.state)
        if state != before_state:
            payload["state"] = state
            payload["reason"] = "%s chose %s" % (method, state)
        if json.dumps(job.data, sort_keys=True, default=str) != before_data:
            old = json.loads(before_data)
            changed = {k: v for k, v in job.data.items() if old.get(k, object()) != v}
            for k in old:
                if k not in job.data:
                    changed[k] = None
            payload["data"] = json.loads(json.dumps(changed, default=str))
    if result_path:
        write_atomically(result_path, payload)
    return 0


def preamble(directory):
    job = load_job(directory)
    cls = load_class(job.app)
    text = cls(job).shell_preamble()
    if isinstance(text, (list, tuple)):
        text = "\n".join(str(line) for line in text)
    sys.stdout.write((text or "") + "\n")
    return 0


# --- the warm worker ------------------------------------------------------------------------------------------


def set_parent_death_signal():
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def read_request(fd, buffer):
    """The next request ("LENGTH\\n" then LENGTH bytes of NUL-ended fields) from `buffer` (refilled from `fd` when
    `fd` is given, blocking); (fields, rest), or (None, buffer) when it is not complete (None, None at the end)."""
    while True:
        newline = buffer.find(b"\n")
        if newline >= 0:
            length = int(buffer[:newline])
            if len(buffer) >= newline + 1 + length:
                body = buffer[newline + 1 : newline + 1 + length]
                fields = [f.decode("utf-8", "surrogateescape") for f in body.split(b"\0")[:-1]]
                return fields, buffer[newline + 1 + length :]
        if fd is None:
            return None, buffer
        chunk = os.read(fd, 65536)
        if not chunk:
            return None, None
        buffer += chunk


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data) :]


def encode_request(fields):
    body = b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    return b"%d\n" % len(body) + body


def worker_loop(requests, replies):
    """A warm worker: runs the jobs it is given one at a time, in this process, each in its own directory, with
    its own environment and its output in its own job.out; replies each job's exit status."""
    buffer = b""
    null = os.open("/dev/null", os.O_RDWR)
    while True:
        fields, buffer = read_request(requests, buffer)
        if fields is None:
            os._exit(0)
        directory, output, separator = fields[0], fields[1], fields[2]
        env = dict(field.partition("=")[::2] for field in fields[3:])
        status = 1
        try:
            out = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(out).st_size > 0:
                os.write(out, separator.encode("utf-8", "replace"))
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
            set_environment(env)
            os.chdir(directory)
            status = run_job(directory)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.chdir("/")
        write_all(replies, b"%d\n" % status)


def serve(parent, grace_ms):
    """Speaks balsam-task-guard's protocol on stdin/stdout: requests "LENGTH\\n" + NUL-ended fields (start ID DIR
    OUTPUT SEPARATOR NENV ENV... SCRIPT, or kill ID); replies "ID +PID" when a job started and "ID STATUS [why]"
    when it ended.

    Jobs run in warm workers: processes forked from this interpreter once dill, balsam and the app's class are
    loaded, each running one job at a time in-process (its own directory, environment and job.out). A worker
    whose job crashes, calls os._exit or is killed dies with it, and that job alone ends with the status; the
    next job gets another worker, forked from here."""
    import selectors
    import time

    import dill  # noqa: F401  (loaded once, for every worker)
    import balsam._api.app  # noqa: F401

    set_parent_death_signal()
    if parent and os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    workers = {}  # pid -> {"requests", "replies", "job", "kill_at", "buffer"}
    by_job = {}  # job id -> pid
    by_reply_fd = {}
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    buffer = b""
    closed = False

    def reply(line):
        write_all(1, (line + "\n").encode("utf-8", "replace"))

    def now_ms():
        return time.monotonic() * 1000

    def new_worker():
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                keep = {requests_r, replies_w}
                for fd in [0, wake_r, wake_w, requests_w, replies_r] + [
                    fd for w in workers.values() for fd in (w["requests"], w["replies"])
                ]:
                    if fd not in keep:
                        os.close(fd)
                null = os.open("/dev/null", os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.close(null)
                set_parent_death_signal()
                worker_loop(requests_r, replies_w)
            finally:
                os._exit(70)
        os.close(requests_r)
        os.close(replies_w)
        os.set_blocking(replies_r, False)
        workers[pid] = {"requests": requests_w, "replies": replies_r, "job": None, "kill_at": 0, "buffer": b""}
        by_reply_fd[replies_r] = pid
        selector.register(replies_r, selectors.EVENT_READ)
        return pid

    def drop(pid, raw=None):
        worker = workers.pop(pid)
        selector.unregister(worker["replies"])
        del by_reply_fd[worker["replies"]]
        os.close(worker["requests"])
        os.close(worker["replies"])
        try:
            os.killpg(pid, signal.SIGKILL)  # what its job started goes with it
        except (ProcessLookupError, PermissionError):
            pass
        job = worker["job"]
        if job is not None:
            del by_job[job]
            if raw is None:
                status = 125
            elif os.WIFSIGNALED(raw):
                status = 128 + os.WTERMSIG(raw)
            else:
                status = os.WEXITSTATUS(raw)
            reply("%s %d" % (job, status))

    def start(fields):
        job_id, directory, output, separator, nenv = fields[1:6]
        env_fields = fields[6 : 6 + int(nenv)]
        if job_id in by_job:
            reply("%s 126 already running" % job_id)
            return
        env = dict(field.partition("=")[::2] for field in env_fields)
        if env.get("BALSAM_APP"):
            try:
                # Warm: workers forked from now on have the class; a failure is the job's to report.
                load_class(env["BALSAM_APP"], env.get("BALSAM_SITE"))
            except Exception:
                pass
        idle = [pid for pid, w in workers.items() if w["job"] is None and not w["kill_at"]]
        try:
            pid = idle[0] if idle else new_worker()
        except OSError as exc:
            reply("%s 126 cannot start a worker: %s" % (job_id, exc.strerror))
            return
        worker = workers[pid]
        try:
            write_all(worker["requests"], encode_request([directory, output, separator] + env_fields))
        except OSError:
            drop(pid)
            reply("%s 126 its worker died" % job_id)
            return
        worker["job"] = job_id
        by_job[job_id] = pid
        reply("%s +%d" % (job_id, pid))

    def stop(pid):
        worker = workers.get(pid)
        if worker is None or worker["kill_at"]:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        worker["kill_at"] = now_ms() + grace_ms

    def reap():
        while workers:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in workers:
                drop(pid, raw)

    while True:
        if stopping or closed:
            for pid in list(workers):
                stop(pid)
            if not workers:
                os._exit(0)
        due = [w["kill_at"] for w in workers.values() if w["kill_at"]]
        timeout = max(0.0, (min(due) - now_ms()) / 1000) if due else None
        if closed or stopping:
            timeout = 0.05 if timeout is None else min(timeout, 0.05)
        for key, _ in selector.select(timeout):
            if key.fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            elif key.fd == 0:
                chunk = os.read(0, 65536)
                if not chunk:
                    closed = True
                    selector.unregister(0)
                    continue
                buffer += chunk
            else:
                pid = by_reply_fd.get(key.fd)
                worker = workers.get(pid)
                if worker is None:
                    continue
                try:
                    worker["buffer"] += os.read(key.fd, 4096)
                except BlockingIOError:
                    pass
                while b"\n" in worker["buffer"]:
                    line, _, worker["buffer"] = worker["buffer"].partition(b"\n")
                    job = worker["job"]
                    if job is not None:
                        worker["job"] = None
                        del by_job[job]
                        reply("%s %d" % (job, int(line)))
        reap()
        for pid, worker in list(workers.items()):
            if worker["kill_at"] and now_ms() >= worker["kill_at"]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while True:
            fields, buffer = read_request(None, buffer)
            if fields is None:
                break
            if fields[0] == "start":
                start(fields)
            elif fields[0] == "kill":
                pid = by_job.get(fields[1])
                if pid is not None:
                    stop(pid)


# --- the watcher's warm hook server ---------------------------------------------------------------------------

def hook_server(parent):
    """Serves class hook calls for balsam-watch, one at a time, on stdin/stdout: a request is encoded_request
    fields (DIR HOOK LOG NENV ENV...); the reply is "PID\n" once the call's process is forked, then "STATUS RAW\n"
    (os.waitpid's status) when it ends. Each call runs in a child forked from this interpreter, with dill and balsam
    already loaded (the app's class is read afresh by the child): its own process group, directory, environment, and output appended to LOG.
    The watcher enforces the time limit by killing the child's process group."""
    import dill  # noqa: F401  (loaded once, for every call)
    import balsam._api.app  # noqa: F401

    set_parent_death_signal()
    if parent and os.getppid() != parent:
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    buffer = b""
    while True:
        fields, buffer = read_request(0, buffer)
        if fields is None:
            return
        directory, hook, log, count = fields[0], fields[1], fields[2], int(fields[3])
        env = dict(item.split("=", 1) for item in fields[4 : 4 + count])
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.setpgid(0, 0)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.chdir(directory)
                os.environ.clear()
                os.environ.update(env)
                out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.close(out)
                os.close(null)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                code = run_hook(directory, hook)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        write_all(1, b"%d\n" % pid)
        _, raw = os.waitpid(pid, 0)
        write_all(1, b"STATUS %d\n" % raw)


def main(argv):
    if len(argv) < 2:
        fail("usage: balsam_runner.py check|run|hook METHOD|preamble|serve PARENT GRACE_MS|hooks PARENT", 2)
    mode = argv[1]
    need_modules()
    if mode == "check":
        print("balsam_runner: %s has dill and balsam" % sys.executable)
        return 0
    directory = os.getcwd()
    if mode == "run":
        return run_job(directory)
    if mode == "hook" and len(argv) == 3:
        return run_hook(directory, argv[2])
    if mode == "preamble":
        return preamble(directory)
    if mode == "serve" and len(argv) == 4:
        serve(int(argv[2]), int(argv[3]))
        return 0
    if mode == "hooks" and len(argv) == 3:
        hook_server(int(argv[2]))
        return 0
    fail("unknown mode %r" % " ".join(argv[1:]), 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
