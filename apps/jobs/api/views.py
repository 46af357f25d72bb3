"""REST endpoints for jobs: thin wrappers over apps.jobs.services and selectors."""

from datetime import UTC

import django_filters
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import READ_QUOTAS, require
from apps.accounts.selectors import request_membership
from apps.core.artifact_storage import stored_file_response
from apps.core.errors import RequestTooLarge
from apps.core.pagination import OLDEST_FIRST, PAGE_PARAMETERS, page_of, paginate
from apps.jobs import selectors, services
from apps.jobs.api.serializers import (
    ArtifactOutputSerializer,
    InputArtifactOutputSerializer,
    JobDetailOutputSerializer,
    JobEventOutputSerializer,
    JobOutputSerializer,
    JobSubmitInputSerializer,
    JobSummaryOutputSerializer,
    QueueOutputSerializer,
    bulk_submit_requests,
)
from apps.jobs.kinds import all_kinds
from apps.jobs.models import Artifact, FailureOrigin, Job, JobStatus
from apps.jobs.quotas import quota_usage


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time in any offset, compared in UTC: PostgreSQL refuses offsets past 15:59 (e.g. +23:51)."""

    def filter(self, qs, value):
        return super().filter(qs, value.astimezone(UTC) if value is not None else value)


class JobFilter(django_filters.FilterSet):
    kind = django_filters.CharFilter()
    status = django_filters.MultipleChoiceFilter(choices=JobStatus.choices)
    failure = django_filters.ChoiceFilter(choices=FailureOrigin.choices)
    queue = django_filters.CharFilter()
    owner = django_filters.CharFilter(field_name="owner__username")
    parent = django_filters.UUIDFilter(field_name="parent_id")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Job
        fields = ["kind", "status", "failure", "queue", "owner", "parent", "created_after", "created_before"]


JOB_FILTER_PARAMETERS = [
    OpenApiParameter("kind", str),
    OpenApiParameter("status", str, enum=JobStatus.values, many=True, explode=True, description="Repeatable."),
    OpenApiParameter("queue", str),
    OpenApiParameter(
        "failure",
        str,
        enum=FailureOrigin.values,
        description="Failed jobs by whose failure it was: `system` (dead letters: attempts exhausted, crashes) "
        "or `user` (the job's own input or program).",
    ),
    OpenApiParameter("owner", str, description="A username."),
    OpenApiParameter("parent", OpenApiTypes.UUID, description="The jobs a sweep fanned out into."),
    OpenApiParameter("created_after", OpenApiTypes.DATETIME, description="ISO 8601, inclusive."),
    OpenApiParameter("created_before", OpenApiTypes.DATETIME, description="ISO 8601, exclusive."),
]


def filtered(filterset_class, request, queryset):
    """The queryset narrowed by the request's filters; 400 naming each invalid value."""
    empty = sorted(name for name in filterset_class.base_filters if request.query_params.get(name, None) == "")
    if empty:
        # django-filter skips an empty value, so `?parent=` would list everything: refuse it.
        raise serializers.ValidationError({empty[0]: ["Give a value, or leave the parameter out."]})
    filterset = filterset_class(request.query_params, queryset=queryset)
    if not filterset.is_valid():
        raise serializers.ValidationError(filterset.errors)
    return filterset.qs


IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Repeat a submit safely: the same key returns the same job.",
)


def idempotency_key(request) -> str | None:
    """The request's Idempotency-Key header, or None; a 400 when it is too long to store."""
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > 128:
        raise serializers.ValidationError({"Idempotency-Key": ["At most 128 characters."]})
    return key


class JobListCreateApi(APIView):
    """List the organization's jobs (filters, cursor pagination), or submit one."""

    required_scopes = {"GET": "jobs:read", "POST": "jobs:write"}

    InputSerializer = JobSubmitInputSerializer

    @extend_schema(
        parameters=[*JOB_FILTER_PARAMETERS, *PAGE_PARAMETERS],
        responses=page_of(JobSummaryOutputSerializer),
        operation_id="jobs_list",
        description="Newest first. Summaries: params and result are on the job's own page (`/jobs/{id}/`).",
    )
    def get(self, request):
        membership = request_membership(request)
        queryset = filtered(JobFilter, request, selectors.job_list(membership=membership))
        # Params and results stay in the database: a page of sandbox jobs once carried 60 MB of output.
        queryset = queryset.defer("params", "result")
        return paginate(request, queryset, JobSummaryOutputSerializer, allowed=JobFilter.Meta.fields)

    @extend_schema(
        request=InputSerializer,
        responses={201: JobOutputSerializer, 200: JobOutputSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        operation_id="jobs_submit",
        description="201 with a new job; 200 with the existing one when the Idempotency-Key was used "
        "with the same request; 422 when it was used with a different one.",
    )
    def post(self, request):
        membership = request_membership(request)
        try:
            payload = request.data
        except RequestDataTooBig as exc:
            # Django's own answer would be an HTML 400; inline inference inputs are what grows here.
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            raise RequestTooLarge(
                f"The request body is larger than {limit} bytes. Upload large inference inputs as a .npy/.npz "
                "(POST /api/v1/artifacts/) and pass its id as params.inputs_artifact.",
                details={"max_bytes": limit},
            ) from exc
        data = self.InputSerializer(data=payload)
        data.is_valid(raise_exception=True)
        job, created = services.job_submit(
            membership=membership, idempotency_key=idempotency_key(request), **data.validated_data
        )
        return Response(
            JobOutputSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class JobBulkSubmitApi(APIView):
    """Submit many jobs in one request: all of them, or none."""

    required_scopes = {"POST": "jobs:write"}

    class InputSerializer(serializers.Serializer):
        jobs = serializers.ListField(
            child=serializers.JSONField(),
            min_length=1,
            max_length=settings.JOBS_BULK_MAX,
            help_text=f"1 to {settings.JOBS_BULK_MAX} jobs, each as for `POST /api/v1/jobs/`.",
        )

        class Meta:
            ref_name = "JobBulkSubmitInput"

    class OutputSerializer(serializers.Serializer):
        jobs = JobOutputSerializer(many=True)

        class Meta:
            ref_name = "JobBulkSubmitOutput"

    @extend_schema(
        request=InputSerializer,
        responses={201: OutputSerializer},
        operation_id="jobs_submit_bulk",
        description="Every job is validated first; one bad item refuses the whole request with each problem "
        "named by index and field (`jobs[3].params.duration_s`). Quotas and backlog caps are checked once for "
        "the batch, the jobs are recorded in one transaction, and their order in the response is the request's. "
        "No Idempotency-Key.",
    )
    def post(self, request):
        membership = request_membership(request)
        envelope = self.InputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        requests, problems = bulk_submit_requests(envelope.validated_data["jobs"])
        jobs = services.jobs_submit_bulk(membership=membership, requests=requests, problems=problems)
        return Response(
            self.OutputSerializer({"jobs": jobs}).data,
            status=status.HTTP_201_CREATED,
        )


class JobDetailApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(responses=JobDetailOutputSerializer, operation_id="jobs_detail")
    def get(self, request, job_id):
        job = selectors.job_get(membership=request_membership(request), job_id=job_id)
        return Response(JobDetailOutputSerializer(job).data)


class QueueListApi(APIView):
    """The job queues: paused or not, and how many jobs wait in each (all organizations, counts only)."""

    required_scopes = {"GET": "jobs:read"}

    @extend_schema(responses=QueueOutputSerializer(many=True), operation_id="queues_list")
    def get(self, request):
        request_membership(request)
        return Response(QueueOutputSerializer(selectors.queue_list(), many=True).data)


class QueueDetailApi(APIView):
    """One queue; platform operators (superusers) pause and resume it."""

    required_scopes = {"GET": "jobs:read", "PATCH": "jobs:write"}

    class InputSerializer(serializers.Serializer):
        paused = serializers.BooleanField(help_text="true: no job of the queue is claimed until false again.")
        reason = serializers.CharField(
            max_length=200, required=False, allow_blank=True, default="", help_text="Shown to users whose jobs wait."
        )

        class Meta:
            ref_name = "QueuePatchInput"

    @extend_schema(responses=QueueOutputSerializer, operation_id="queues_detail")
    def get(self, request, name):
        request_membership(request)
        return Response(QueueOutputSerializer(selectors.queue_get(name=name)).data)

    @extend_schema(
        request=InputSerializer,
        responses=QueueOutputSerializer,
        operation_id="queues_update",
        description="Pause or resume the queue (platform operators only; audited). Claims stop or restart at "
        "once; queued jobs wait and are not lost. Only `cpu` and `gpu` can be paused.",
    )
    def patch(self, request, name):
        selectors.queue_get(name=name)  # 404 before 403 for a queue that does not exist
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.queue_set_paused(queue=name, actor=request.user, **data.validated_data)
        return Response(QueueOutputSerializer(selectors.queue_get(name=name)).data)


class JobCancelApi(APIView):
    required_scopes = {"POST": "jobs:write"}

    @extend_schema(request=None, responses={202: JobOutputSerializer}, operation_id="jobs_cancel")
    def post(self, request, job_id):
        membership = request_membership(request)
        job = services.job_cancel(job=selectors.job_get(membership=membership, job_id=job_id), actor=membership)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobRetryApi(APIView):
    required_scopes = {"POST": "jobs:write"}

    @extend_schema(request=None, responses={202: JobOutputSerializer}, operation_id="jobs_retry")
    def post(self, request, job_id):
        membership = request_membership(request)
        job = services.job_retry(job=selectors.job_get(membership=membership, job_id=job_id), actor=membership)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobEventsApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses=page_of(JobEventOutputSerializer),
        operation_id="jobs_events",
        description="Oldest first: the job's transitions in the order they happened.",
    )
    def get(self, request, job_id):
        job = selectors.job_get(membership=request_membership(request), job_id=job_id)
        return paginate(request, selectors.job_events(job=job), JobEventOutputSerializer, ordering=OLDEST_FIRST)


class JobArtifactsApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(ArtifactOutputSerializer), operation_id="jobs_artifacts"
    )
    def get(self, request, job_id):
        job = selectors.job_get(membership=request_membership(request), job_id=job_id)
        artifacts = selectors.job_artifacts(job=job)
        return paginate(
            request, artifacts, ArtifactOutputSerializer, context={"request": request}, ordering=OLDEST_FIRST
        )


class ArtifactDownloadApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, operation_id="jobs_artifact_download"
    )
    def get(self, request, job_id, artifact_id):
        job = selectors.job_get(membership=request_membership(request), job_id=job_id)
        artifact = selectors.job_artifacts(job=job).filter(pk=artifact_id).first()
        if artifact is None:
            from apps.core.errors import NotFound

            raise NotFound("No such artifact.")
        return _artifact_download(artifact)


class JobKindParamSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="The serializer field's type, e.g. `integer`, `float`, `char`.")
    required = serializers.BooleanField()
    default = serializers.JSONField(allow_null=True)
    help = serializers.CharField(allow_blank=True)

    class Meta:
        ref_name = "JobKindParam"


class JobKindSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    params = serializers.DictField(child=JobKindParamSerializer(), help_text="Parameter name -> its description.")
    time_limit_s = serializers.IntegerField(allow_null=True)

    class Meta:
        ref_name = "JobKind"


class JobKindsApi(APIView):
    """The job kinds this deployment knows, with their parameters."""

    required_scopes = {"GET": "jobs:read"}

    @extend_schema(responses=JobKindSerializer(many=True), operation_id="jobs_kinds")
    def get(self, request):
        kinds = []
        for name, kind in sorted(all_kinds().items()):
            fields = {
                field_name: {
                    "type": type(field).__name__.replace("Field", "").lower(),
                    "required": field.required,
                    "default": _field_default(field),
                    "help": str(field.help_text or ""),
                }
                for field_name, field in kind.params_serializer().fields.items()
            }
            kinds.append(
                {"name": name, "description": kind.description, "params": fields, "time_limit_s": kind.time_limit_s}
            )
        return Response(kinds)


class QuotaApi(APIView):
    """The organization's quotas beside their current use: active jobs per kind, sandbox caps, GPU seconds today."""

    required_scopes = {"GET": "jobs:read"}

    @extend_schema(responses=OpenApiTypes.OBJECT, operation_id="quota")
    def get(self, request):
        membership = request_membership(request)
        require(membership, READ_QUOTAS, "read quotas")
        return Response(quota_usage(membership.organization))


def _field_default(field):
    if field.default is serializers.empty:
        return None
    # A callable default (e.g. `dict` for nested limits) is documented by what it makes.
    return field.default() if callable(field.default) else field.default


class InputArtifactListUploadApi(APIView):
    """List the organization's uploaded job inputs, or upload one (`.npy` or `.npz`, multipart `file`)."""

    required_scopes = {"GET": "jobs:read", "POST": "jobs:write"}

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(
            help_text="A .npy (one array) or .npz (one array per input name); no pickled object arrays."
        )

        class Meta:
            ref_name = "ArtifactUploadInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(InputArtifactOutputSerializer), operation_id="artifacts_list"
    )
    def get(self, request):
        queryset = selectors.input_artifact_list(membership=request_membership(request)).select_related("owner")
        return paginate(request, queryset, InputArtifactOutputSerializer, context={"request": request})

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={201: InputArtifactOutputSerializer, 200: InputArtifactOutputSerializer},
        operation_id="artifacts_upload",
    )
    def post(self, request):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        artifact, created = services.artifact_upload(membership=membership, source=upload, name=upload.name)
        return Response(
            InputArtifactOutputSerializer(artifact, context={"request": request}).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class InputArtifactDetailApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(responses=InputArtifactOutputSerializer, operation_id="artifacts_detail")
    def get(self, request, artifact_id):
        artifact = selectors.input_artifact_get(membership=request_membership(request), artifact_id=artifact_id)
        return Response(InputArtifactOutputSerializer(artifact, context={"request": request}).data)


class InputArtifactDownloadApi(APIView):
    required_scopes = {"GET": "jobs:read"}

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, operation_id="artifacts_download"
    )
    def get(self, request, artifact_id):
        artifact = selectors.input_artifact_get(membership=request_membership(request), artifact_id=artifact_id)
        return _artifact_download(artifact)


def _artifact_download(artifact: Artifact) -> FileResponse:
    """The artifact's bytes streamed from the artifact storage, as an attachment under its name."""
    return stored_file_response(
        artifact.file.name,
        size=artifact.size_bytes,
        as_attachment=True,
        filename=artifact.name,
        content_type=artifact.content_type,
    )
