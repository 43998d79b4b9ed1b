"""The original Balsam Python client (balsam==0.7.0a24, unmodified, from PyPI) against our balsam-server.

Run by ServerTests (ClientTests.swift) with the venv that dev/test makes:

    BALSAM_TEST_SERVER=http://127.0.0.1:PORT python original_client_test.py

It uses the client the way users do: a client.yml (written here, pointed at by BALSAM_CLIENT_PATH), then
`from balsam.api import ...` and the seed's calls. The test plays the site's part by moving job states through the
API from a thread, as a site would. Every check raises AssertionError with what differed; the exit status is 0
only when everything passed. A second user, in a subprocess with its own client.yml, must see none of it.
"""

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time

import dill
import requests

URL = os.environ["BALSAM_TEST_SERVER"].rstrip("/")


def login(username, password, register=True):
    if register:
        r = requests.post(f"{URL}/auth/password/register", json={"username": username, "password": password})
        assert r.status_code == 201, (r.status_code, r.text)
    r = requests.post(f"{URL}/auth/password/login", data={"username": username, "password": password})
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert body["token_type"] == "bearer", body
    # The client compares the expiration with a naive utcnow(): it must carry no zone.
    assert "+" not in body["expiration"] and not body["expiration"].endswith("Z"), body
    return body["access_token"], body["expiration"]


def write_client_file(token, expiration):
    directory = tempfile.mkdtemp(prefix="balsam-client-")
    path = os.path.join(directory, "client.yml")
    with open(path, "w") as f:
        f.write(
            f"api_root: {URL}\n"
            "client_class: balsam.client.BasicAuthRequestsClient\n"
            f"token: {token}\n"
            f"token_expiry: {expiration}\n"
            # The client retries every failed request, 4xx included, with 2**n s back-off: 0 here.
            "retry_count: 0\n"
        )
    os.environ["BALSAM_CLIENT_PATH"] = path
    return path


def expect_refusal(call, *needles):
    """The client turns an HTTP error into TimeoutError after its (zero) retries; the reason is in the text."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the client raises TimeoutError wrapping the HTTPError
        text = str(exc)
        for needle in needles:
            assert needle in text, f"expected {needle!r} in the error, got: {text}"
        return
    raise AssertionError(f"expected a refusal containing {needles}")


def play_site(token, job_ids, values, failing_id):
    """What a site does: run each job and report, with the site's timestamps, in bulk PATCHes."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def patch(items):
        r = session.patch(f"{URL}/jobs/", json=items)
        assert r.status_code == 200, (r.status_code, r.text)

    for state in ["PREPROCESSED", "RUNNING"]:
        patch([{"id": i, "state": state} for i in job_ids])
        time.sleep(0.05)
    done = []
    for i in job_ids:
        if i == failing_id:
            exc = ValueError("the site says no")
            payload = base64.b64encode(dill.dumps((exc, None))).decode()
            done.append({"id": i, "state": "RUN_ERROR", "serialized_exception": payload,
                         "state_data": {"returncode": 1}})
        else:
            payload = base64.b64encode(dill.dumps(values[i])).decode()
            done.append({"id": i, "state": "RUN_DONE", "serialized_return_value": payload, "return_code": 0})
    patch(done)
    patch([{"id": i, "state": "POSTPROCESSED"} for i in job_ids if i != failing_id])
    patch([{"id": failing_id, "state": "FAILED", "state_data": {"message": "no retries left"}}])


def main(token, expiration):
    from balsam.api import BatchJob, EventLog, Job, Site

    site = Site.objects.create(name="my-laptop", path="/tmp/my-laptop")
    assert site.id is not None and site.name == "my-laptop"
    assert Site.objects.get(name="my-laptop").id == site.id
    expect_refusal(lambda: Site.objects.create(name="my-laptop", path="/tmp/other"), "400")

    Hello.sync()
    assert Hello.__app_id__ is not None

    # The seed's calls.
    job = Job.objects.create(site_name="my-laptop", app_id="Hello", workdir="test/say-hello",
                             parameters={"name": "world!"})
    assert job.id is not None and job.state == "STAGED_IN", job.state
    assert job.get_parameters() == {"name": "world!"}
    # The seed passes site_id=job.site_id; the client answers that from the app class it unpickled for
    # app_id="Hello", whose site it never resolves (an AssertionError inside the client, whatever the server).
    job_from_class = Job.objects.create(app_id=Hello, workdir="test/from-class", parameters={"name": "class"})
    assert job_from_class.app_id == job.app_id
    batch = BatchJob.objects.create(site_id=site.id, num_nodes=1, wall_time_min=10, job_mode="serial",
                                    project="local", queue="local")
    assert batch.state == "pending_submission", batch.state
    assert BatchJob.objects.filter(site_id=site.id, state="pending_submission").count() == 1

    # A required parameter missing: a clear 400 naming it (the original server accepted it).
    expect_refusal(lambda: Job.objects.create(site_name="my-laptop", app_id="Hello", workdir="test/x"), "name")

    # bulk_create, filters, count, slicing, ordering.
    jobs = Job.objects.bulk_create([
        Job(workdir=f"batch/{i:02d}", app_id=Hello.__app_id__, parameters={"name": f"n{i}"},
            tags={"batch": "b", "parity": "even" if i % 2 == 0 else "odd"})
        for i in range(10)
    ])
    assert len(jobs) == 10 and all(j.id is not None for j in jobs)
    assert Job.objects.filter(tags={"batch": "b"}).count() == 10
    assert Job.objects.filter(tags={"batch": "b", "parity": "odd"}).count() == 5
    assert Job.objects.filter(state="STAGED_IN").count() == 12
    assert Job.objects.filter(workdir__contains="batch/0").count() == 10
    assert Job.objects.filter(state__ne="STAGED_IN").count() == 0
    ordered = list(Job.objects.filter(tags={"batch": "b"}).order_by("-workdir")[2:5])
    assert [j.workdir.as_posix() for j in ordered] == ["batch/07", "batch/06", "batch/05"], ordered
    assert Job.objects.filter(tags={"batch": "b"}).order_by("workdir")[0].workdir.as_posix() == "batch/00"

    # update by query, and a save of one job.
    Job.objects.filter(tags={"parity": "odd"}).update(data={"checked": True})
    assert all(j.data == {"checked": True} for j in Job.objects.filter(tags={"parity": "odd"}))
    one = Job.objects.filter(workdir__contains="batch/00")[0]
    before = one.last_update
    one.data = {"note": "saved"}
    one.save()
    one.refresh_from_db()
    assert one.data == {"note": "saved"} and one.last_update > before

    # An illegal state change is refused, naming both states.
    bad = Job.objects.filter(workdir__contains="batch/01")[0]
    bad.state = "JOB_FINISHED"
    expect_refusal(bad.save, "STAGED_IN", "JOB_FINISHED")

    # The site's part, from a thread; the user waits with as_completed and reads results.
    ids = [j.id for j in jobs]
    values = {i: {"square": n * n} for n, i in enumerate(ids)}
    failing = ids[3]
    site_thread = threading.Thread(target=play_site, args=(token, ids, values, failing))
    site_thread.start()
    finished = []
    for done in Job.objects.as_completed(jobs, timeout=60, poll_interval=0.2):
        finished.append(done.id)
        if done.id == failing:
            assert done.state == "FAILED", done.state
            try:
                done.result()
            except ValueError as exc:
                assert "the site says no" in str(exc)
            else:
                raise AssertionError("the failed job's result() did not raise")
        else:
            assert done.state == "JOB_FINISHED", done.state
            assert done.result() == values[done.id], (done.result(), values[done.id])
    site_thread.join()
    assert sorted(finished) == sorted(ids), finished

    # Events: the history the site reported, filterable.
    finished_events = EventLog.objects.filter(job_id=ids[0])
    states = [(e.from_state, e.to_state) for e in finished_events]
    assert ("CREATED", "STAGED_IN") in states and ("RUN_DONE", "JOB_FINISHED") in states, states
    assert EventLog.objects.filter(to_state="FAILED").count() == 1
    assert EventLog.objects.filter(tags={"batch": "b"}, to_state="RUNNING").count() == 10

    # Delete by query.
    Job.objects.filter(tags={"parity": "even"}).delete()
    assert Job.objects.filter(tags={"batch": "b"}).count() == 5

    # A second user sees none of it, and cannot reach alice's objects by id.
    bob_token, bob_expiration = login("bob", "bob-password-1")
    env = dict(os.environ, BALSAM_CLIENT_PATH=write_client_file(bob_token, bob_expiration))
    os.environ["BALSAM_CLIENT_PATH"] = write_client_file(token, expiration)
    check = subprocess.run(
        [sys.executable, __file__, "isolation", str(site.id), str(ids[1]), str(Hello.__app_id__)],
        env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    print("original client: all checks passed")


def isolation(site_id, job_id, app_id):
    from balsam.api import BatchJob, EventLog, Job, Site

    assert Site.objects.count() == 0
    assert Job.objects.count() == 0
    assert Job.objects.filter(id=job_id).count() == 0
    assert BatchJob.objects.count() == 0
    assert EventLog.objects.count() == 0
    expect_refusal(lambda: Job.objects.create(app_id=app_id, workdir="steal/1"), "404")
    expect_refusal(lambda: BatchJob.objects.create(site_id=site_id, num_nodes=1, wall_time_min=1,
                                                   job_mode="mpi", project="p", queue="q"), "404")
    print("isolation: bob sees nothing of alice's")


if len(sys.argv) > 1 and sys.argv[1] == "isolation":
    isolation(*[int(a) for a in sys.argv[2:5]])
    sys.exit(0)

# As a user's script does: the client file first, then balsam.api, then the app class at module level (dill
# pickles a __main__ class by value, and the client finds it again by its name).
TOKEN, EXPIRATION = login("alice", "alice-password-1")
write_client_file(TOKEN, EXPIRATION)

from balsam.api import ApplicationDefinition  # noqa: E402


class Hello(ApplicationDefinition):
    site = "my-laptop"
    command_template = "echo hello {{ name }}"

    def handle_timeout(self):
        self.job.state = "RESTART_READY"


main(TOKEN, EXPIRATION)
