from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.jobs.models import Artifact, Job, JobEvent, Schedule


class JobOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", allow_null=True, default=None)
    parent = serializers.UUIDField(source="parent_id", allow_null=True)
    duration_s = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "priority",
            "queue",
            "params",
            "result",
            "error",
            "failure",
            "progress",
            "progress_message",
            "attempt",
            "max_attempts",
            "idempotency_key",
            "run_after",
            "concurrency_key",
            "concurrency_limit",
            "parent",
            "owner",
            "worker_host",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_s",
        ]

    def get_error(self, job: Job) -> dict | None:
        # A crash keeps its traceback on the row for operators (the admin, the worker's log);
        # an API response never shows it.
        if not job.error or "traceback" not in (job.error.get("details") or {}):
            return job.error
        details = {key: value for key, value in job.error["details"].items() if key != "traceback"}
        return {**job.error, "details": details}

    def get_duration_s(self, job: Job) -> float | None:
        duration = job.duration
        return round(duration.total_seconds(), 3) if duration is not None else None


class JobWaitReasonSerializer(serializers.Serializer):
    code = serializers.ChoiceField(
        choices=[
            "run_after",
            "queue_paused",
            "attempts_exhausted",
            "organization_limit",
            "key_limit",
            "rate_limited",
            "no_live_host",
            "behind",
        ]
    )
    message = serializers.CharField()
    ahead = serializers.IntegerField(required=False, help_text="eligible jobs claimed before this one ('behind')")
    sharing = serializers.IntegerField(
        required=False,
        help_text="other organizations with eligible work at the same priority, served in turn by fair share "
        "('behind')",
    )

    class Meta:
        ref_name = "JobWaitReason"


class JobDetailOutputSerializer(JobOutputSerializer):
    """A job with, while it is queued, why it is not running yet (the claim's own rules)."""

    wait_reason = serializers.SerializerMethodField()

    class Meta(JobOutputSerializer.Meta):
        fields = [*JobOutputSerializer.Meta.fields, "wait_reason"]

    @extend_schema_field(JobWaitReasonSerializer(allow_null=True))
    def get_wait_reason(self, job: Job) -> dict | None:
        from apps.jobs.selectors import job_wait_reason

        return job_wait_reason(job)


class QueueOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    paused = serializers.BooleanField()
    reason = serializers.CharField()
    queued = serializers.IntegerField(help_text="jobs of every organization waiting in it")

    class Meta:
        ref_name = "Queue"


class JobSummaryOutputSerializer(JobOutputSerializer):
    """A job in a list: everything but its params and result, which can be large."""

    class Meta(JobOutputSerializer.Meta):
        fields = [name for name in JobOutputSerializer.Meta.fields if name not in ("params", "result")]
        ref_name = "JobSummary"


class JobEventOutputSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)

    class Meta:
        model = JobEvent
        fields = ["created_at", "from_status", "to_status", "attempt", "worker", "actor", "message"]


class ArtifactOutputSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["id", "role", "name", "content_type", "size_bytes", "sha256", "attempt", "created_at", "download_url"]

    def get_download_url(self, artifact: Artifact) -> str:
        request = self.context.get("request")
        path = f"/api/v1/jobs/{artifact.job_id}/artifacts/{artifact.id}/download"
        return request.build_absolute_uri(path) if request else path


class InputArtifactOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", allow_null=True, default=None)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = ["id", "name", "content_type", "size_bytes", "sha256", "meta", "owner", "created_at", "download_url"]

    def get_download_url(self, artifact: Artifact) -> str:
        request = self.context.get("request")
        path = f"/api/v1/artifacts/{artifact.id}/download"
        return request.build_absolute_uri(path) if request else path


class JobSubmitInputSerializer(serializers.Serializer):
    """One job as POST /api/v1/jobs/ takes it (and each item of a bulk submit)."""

    kind = serializers.CharField(max_length=64, help_text="One of the registered job kinds, e.g. `sleep`.")
    params = serializers.JSONField(default=dict, help_text="Parameters for the kind; validated per kind.")
    priority = serializers.IntegerField(min_value=0, max_value=9, default=5, help_text="9 is the most urgent.")
    max_attempts = serializers.IntegerField(min_value=1, max_value=20, required=False)
    run_after = serializers.DateTimeField(
        required=False, help_text="Not started before this time (ISO 8601, at most 30 days ahead)."
    )
    concurrency_key = serializers.CharField(
        max_length=100,
        required=False,
        help_text="Jobs of your organization with the same key run at most `concurrency_limit` at a time.",
    )
    concurrency_limit = serializers.IntegerField(
        min_value=1, max_value=1000, required=False, help_text="Default 1; needs `concurrency_key`."
    )

    class Meta:
        ref_name = "JobSubmitInput"


def bulk_submit_requests(items: list) -> tuple[list[dict | None], dict]:
    """Each item parsed as `POST /api/v1/jobs/` parses one: (requests, None where an item failed; problems by field).

    The problems are named `jobs[i].field`; jobs_submit_bulk adds what the services find in
    the other items and refuses the whole request once, naming all of them.
    """
    requests, problems = [], {}
    for index, item in enumerate(items):
        one = JobSubmitInputSerializer(data=item)
        if one.is_valid():
            requests.append(one.validated_data)
            continue
        requests.append(None)
        for name, messages in one.errors.items():
            problems[f"jobs[{index}].{name}"] = [str(message) for message in messages]
    return requests, problems


class ScheduleLastErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="e.g. quota_exceeded, unavailable, creator_not_member")
    message = serializers.CharField()
    at = serializers.DateTimeField()


class ScheduleOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    last_job = serializers.UUIDField(source="last_job_id", allow_null=True)
    last_error = ScheduleLastErrorSerializer(
        allow_null=True, help_text="Why the last firing made no job; null after one that did."
    )

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "kind",
            "params",
            "priority",
            "cron",
            "interval_seconds",
            "timezone",
            "catch_up",
            "enabled",
            "next_run_at",
            "last_run_at",
            "last_job",
            "last_error",
            "created_by",
            "created_at",
            "updated_at",
        ]
