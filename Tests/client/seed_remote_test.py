"""The seed's remote example with the original Balsam client, against our server and a real site.

Run by ServerTests (SiteSyncTests.swift) while the site's balsam-watch (with its sync service) and a launcher run:

    BALSAM_TEST_SERVER=http://127.0.0.1:PORT BALSAM_TEST_TOKEN=... BALSAM_TEST_SITE=NAME python seed_remote_test.py

Prints the job's history as the server holds it (JSON lines "EVENT from to"), for the test to compare with the
site's, and exits 0 only if the job finished there and came back through as_completed.
"""

import os
import sys
import tempfile

URL = os.environ["BALSAM_TEST_SERVER"]
SITE = os.environ["BALSAM_TEST_SITE"]
directory = tempfile.mkdtemp(prefix="balsam-seed-")
with open(os.path.join(directory, "client.yml"), "w") as f:
    f.write(f"api_root: {URL}\nclient_class: balsam.client.BasicAuthRequestsClient\n"
            f"token: {os.environ['BALSAM_TEST_TOKEN']}\nretry_count: 0\n")
os.environ["BALSAM_CLIENT_PATH"] = os.path.join(directory, "client.yml")

from balsam.api import ApplicationDefinition, BatchJob, EventLog, Job, Site  # noqa: E402


class Hello(ApplicationDefinition):
    site = SITE
    command_template = "echo hello {{ name }}"

    def handle_timeout(self):
        self.job.state = "RESTART_READY"


Hello.sync()
job = Job.objects.create(site_name=SITE, app_id="Hello", workdir="test/say-hello", parameters={"name": "world!"})
# The seed passes site_id=job.site_id, which fails inside the client for an app given by name (its unpickled class
# never has its site resolved); the site's id is the same thing.
site_id = Site.objects.get(name=SITE).id
batch = BatchJob.objects.create(site_id=site_id, num_nodes=1, wall_time_min=10, job_mode="serial",
                                project="local", queue="local")
done = list(Job.objects.as_completed([job], timeout=180, poll_interval=0.5))
assert len(done) == 1 and done[0].state == "JOB_FINISHED", [(j.id, j.state) for j in done]
batch.refresh_from_db()
assert batch.state in ("queued", "running", "finished"), batch.state
assert batch.scheduler_id is not None, "the site's scheduler id did not come back"
print("BATCH", batch.state, batch.scheduler_id)
for event in EventLog.objects.filter(job_id=job.id).order_by("timestamp"):
    print("EVENT", event.from_state, event.to_state)
print("seed: the job finished at the site and came back")
sys.exit(0)
