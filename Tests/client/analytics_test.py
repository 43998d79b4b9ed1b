"""The original client's `balsam.analytics` against our server, compared with the server's /reports/ routes.

Run by ServerTests (ReportRouteTests.swift) once a real site's jobs and batch job have ended and been pushed:

    BALSAM_TEST_SERVER=http://127.0.0.1:PORT BALSAM_TEST_TOKEN=... BALSAM_TEST_SITE_ID=N python analytics_test.py

Prints one JSON line (the figures, for the test to compare with the site's own `balsam report`) and exits 0 only
if every series the original computes equals ours.
"""

import json
import os
import sys
import tempfile
import urllib.request
from datetime import datetime, timezone

URL = os.environ["BALSAM_TEST_SERVER"]
TOKEN = os.environ["BALSAM_TEST_TOKEN"]
SITE_ID = int(os.environ["BALSAM_TEST_SITE_ID"])
directory = tempfile.mkdtemp(prefix="balsam-analytics-")
with open(os.path.join(directory, "client.yml"), "w") as f:
    f.write(f"api_root: {URL}\nclient_class: balsam.client.BasicAuthRequestsClient\n"
            f"token: {TOKEN}\nretry_count: 0\n")
os.environ["BALSAM_CLIENT_PATH"] = os.path.join(directory, "client.yml")

from balsam.analytics import available_nodes, throughput_report, utilization_report  # noqa: E402
from balsam.api import BatchJob, EventLog  # noqa: E402


def report(path):
    request = urllib.request.Request(URL + path, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request) as r:
        return json.load(r)


def seconds(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def check(condition, message):
    if not condition:
        print("FAILED:", message, file=sys.stderr)
        sys.exit(1)


# Throughput: the original's cumulative count of JOB_FINISHED events against our bins of 1 s.
times, counts = throughput_report(EventLog.objects.all())
ours = report(f"/reports/throughput?bin=1&site_id={SITE_ID}")
check(len(times) == ours["total"] and counts[-1] == len(times), f"{len(times)} finished against {ours['total']}")
origin = seconds(ours["bins"][0]["start"])
binned = [0] * len(ours["bins"])
for t in times:
    binned[int((seconds(t) - origin) // ours["bin_seconds"])] += 1
check(binned == [b["count"] for b in ours["bins"]], f"bins {binned} against {ours['bins']}")
minutes = report("/reports/throughput")
check(minutes["total"] == len(times) and minutes["bin_seconds"] % 60 == 0, f"per-minute total: {minutes}")

# Utilization: the original's step series (node-weighted) against ours, step for step, and its integral.
util_times, util_counts = utilization_report(EventLog.objects.all())
steps = report(f"/reports/utilization?steps=true&bin=1&site_id={SITE_ID}")
check(len(steps["steps"]) == len(util_times), f"{len(util_times)} steps against {len(steps['steps'])}")
for (t, c), s in zip(zip(util_times, util_counts), steps["steps"]):
    check(abs(seconds(t) - seconds(s["time"])) < 1e-3 and abs(c - s["busy"]) < 1e-9, f"step {t} {c} against {s}")
integral = sum(c * (seconds(util_times[k + 1]) - seconds(util_times[k])) for k, c in enumerate(util_counts[:-1]))
check(abs(integral - steps["busy_node_seconds"]) < 1e-3, f"integral {integral} against {steps['busy_node_seconds']}")
rollup = report("/reports/utilization")
check(abs(integral - rollup["busy_node_seconds"]) < 1e-3,
      f"per-minute busy node-seconds {rollup['busy_node_seconds']} against {integral}")
check(abs(sum(b["busy"] for b in rollup["bins"]) * rollup["bin_seconds"] - integral) < 1e-3, "bins add up")

# Available nodes: the original's series from BatchJob against our batch jobs' times and nodes.
node_times, node_counts = available_nodes(BatchJob.objects.filter(site_id=SITE_ID))
ours_held = sorted([(seconds(b["start_time"]), b["num_nodes"]) for b in rollup["batch_jobs"]]
                   + [(seconds(b["end_time"]), -b["num_nodes"]) for b in rollup["batch_jobs"] if b["end_time"]])
check(len(node_times) == len(ours_held) and len(node_times) >= 2, f"{node_times} against {ours_held}")
level = 0
for (t, n), (ot, on) in zip(zip(node_times, node_counts), ours_held):
    level += on
    check(abs(seconds(t) - ot) < 1e-3 and n == level, f"available {t} {n} against {ot} {level}")

# Failures: one row per job, its latest failing event as the original lists them, newest first, against ours.
failed = sorted((seconds(e.timestamp), e.job_id, e.to_state) for state in ("RUN_ERROR", "RUN_TIMEOUT", "FAILED")
                for e in EventLog.objects.filter(to_state=state))[::-1]
latest = {}
# In the same millisecond a FAILED comes after the run's end that led to it.
for _, j, s in sorted(failed, key=lambda f: (f[0], f[2] == "FAILED"), reverse=True):
    latest.setdefault(j, s)
listed = report("/reports/failures?limit=100")
check(sorted(latest.items()) == sorted((f["job_id"], f["state"]) for f in listed), f"{failed} against {listed}")
check(all(f["attempts"] == 1 and f["return_code"] == 3 and "broken" in f["tail"] for f in listed), f"{listed}")
listed_times = [seconds(f["time"]) for f in listed]
check(listed_times == sorted(listed_times, reverse=True), f"newest first: {listed_times}")
check(all(f["site_id"] == SITE_ID and f["workdir"] for f in listed), f"{listed}")

print(json.dumps({"finished": len(times), "busy_node_seconds": integral, "failures": len(listed),
                  "batch_jobs": rollup["batch_jobs"]}))
print("analytics: every series matched", file=sys.stderr)
