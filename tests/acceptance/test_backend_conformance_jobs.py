"""Conformance end to end: ONNX backend test cases uploaded through the API, run as jobs on a real worker, downloaded.

The sample is every case the installed onnxruntime passes bare (100 with onnx 1.23 and
onnxruntime 1.31): each model goes through `POST /api/v1/models/`, its test inputs through
`POST /api/v1/artifacts/` as an .npz, an inference job by version number, and the outputs
come back through the artifact download. Refusals must say why, and at least 95% must pass.
"""

import io
import time

import numpy as np
import pytest

from apps.accounts.throttling import TokenRateThrottle
from apps.jobs.models import Job
from tests.backend_cases import all_cases, bare_onnxruntime_passes, outputs_match

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _npz(names, arrays) -> io.BytesIO:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{
            name: array.astype(str) if array.dtype.kind == "O" else array
            for name, array in zip(names, arrays, strict=False)
        },
    )
    buffer.seek(0)
    buffer.name = "inputs.npz"
    return buffer


def test_backend_cases_uploaded_run_and_downloaded_give_the_reference_outputs(member, start_worker, monkeypatch):
    # ~300 requests in a few seconds: far over the per-token rate, which is not what this tests.
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"api": "100000/minute"})
    cases = [case for case in all_cases() if bare_onnxruntime_passes(case)]
    _, client = member("owner")
    start_worker("cpu")
    outcomes: dict[str, tuple[str, str]] = {}
    jobs = {}
    for index, case in enumerate(cases):
        name = f"case-{index}"
        with case.model_path.open("rb") as handle:
            upload = client.post("/api/v1/models/", {"file": handle, "name": name}, format="multipart")
        if upload.status_code != 201:
            outcomes[case.id] = ("refused", f"upload {upload.status_code}: {upload.json().get('detail')}")
            continue
        version = upload.json()
        data = case.data_sets()[0]
        names = [spec["name"] for spec in version["signature"]["inputs"]]
        artifact = client.post("/api/v1/artifacts/", {"file": _npz(names, data.inputs)}, format="multipart")
        assert artifact.status_code in (200, 201), artifact.json()  # identical inputs share one upload
        response = client.post(
            "/api/v1/jobs/",
            {
                "kind": "inference",
                "params": {"model": f"{name}@1", "inputs_artifact": artifact.json()["id"], "batch_size": 1},
            },
            format="json",
        )
        if response.status_code != 201:
            outcomes[case.id] = ("refused", f"submit {response.status_code}: {response.json().get('detail')}")
            continue
        jobs[case.id] = (response.json()["id"], version, data)

    deadline = time.monotonic() + 120
    for case_id, (job_id, version, data) in jobs.items():
        while not (job := Job.objects.get(pk=job_id)).is_terminal and time.monotonic() < deadline:
            time.sleep(0.05)
        if job.status != "succeeded":
            outcomes[case_id] = ("refused", f"job {job.status}: {job.error}")
            continue
        artifact = client.get(f"/api/v1/jobs/{job_id}/artifacts").json()["results"][0]
        stored = np.load(io.BytesIO(b"".join(client.get(artifact["download_url"]).streaming_content)))
        problems = [
            f"{spec['name']}: {problem}"
            for spec, expected in zip(version["signature"]["outputs"], data.outputs, strict=True)
            if (problem := outputs_match(stored[spec["name"]], expected))
        ]
        outcomes[case_id] = ("wrong", "; ".join(problems)) if problems else ("passed", "")

    passed = [case for case, (status, _) in outcomes.items() if status == "passed"]
    wrong = {case: detail for case, (status, detail) in outcomes.items() if status == "wrong"}
    refused = {case: detail for case, (status, detail) in outcomes.items() if status == "refused"}
    print(f"\nend to end: {len(passed)} passed, {len(refused)} refused, {len(wrong)} wrong of {len(cases)}")
    for case, detail in sorted(refused.items()):
        print(f"  refused {case}: {detail}")
    assert not wrong, wrong
    assert all(detail.strip() for detail in refused.values())
    assert len(cases) >= 100
    assert len(passed) >= 0.95 * len(cases), sorted(refused.items())
