"""REST endpoints for the model registry."""

import datetime

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import request_membership
from apps.core.pagination import PAGE_PARAMETERS, check_query_parameters, page_of, paginate
from apps.jobs.api.serializers import JobOutputSerializer
from apps.registry import selectors, services
from apps.registry.models import DevicePreference, MLModel, ModelAliasEvent, ModelTask, ModelVersion, Stage
from workers.compile_targets import TARGETS


class VersionOutputSerializer(serializers.ModelSerializer):
    derived_from = serializers.IntegerField(source="derived_from.number", allow_null=True, default=None)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "number",
            "sha256",
            "size_bytes",
            "signature",
            "ir_version",
            "opset",
            "producer",
            "stage",
            "device_preference",
            "derived_from",
            "report",
            "batching",
            "aliases",
            "created_at",
        ]

    def get_aliases(self, version) -> list[str]:
        return [alias.name for alias in version.aliases.all()]


class ModelOutputSerializer(serializers.ModelSerializer):
    versions = VersionOutputSerializer(many=True)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = MLModel
        fields = ["name", "task", "description", "created_at", "aliases", "versions"]

    def get_aliases(self, model) -> dict:
        return {
            alias.name: {"version": alias.version.number, "weight": alias.weight}
            for alias in model.aliases.select_related("version")
        }


class VersionSummaryOutputSerializer(VersionOutputSerializer):
    """A version in a model list: without its IO signature and validation report (on the model's page)."""

    class Meta(VersionOutputSerializer.Meta):
        fields = [name for name in VersionOutputSerializer.Meta.fields if name not in ("signature", "report")]
        ref_name = "VersionSummary"


class ModelSummaryOutputSerializer(ModelOutputSerializer):
    versions = VersionSummaryOutputSerializer(many=True)

    class Meta(ModelOutputSerializer.Meta):
        ref_name = "ModelSummary"


class ModelListUploadApi(APIView):
    """List the organization's models, or upload an ONNX file as a model's next version."""

    required_scopes = {"GET": "models:read", "POST": "models:write"}

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(help_text="The ONNX model (external data is refused).")
        name = serializers.CharField(help_text="Model name: lowercase letters, digits, '-', '_'.")
        task = serializers.ChoiceField(choices=ModelTask.choices, default=ModelTask.GENERIC)
        description = serializers.CharField(required=False, default="", allow_blank=True)
        device_preference = serializers.ChoiceField(choices=DevicePreference.choices, default=DevicePreference.AUTO)

        class Meta:
            ref_name = "ModelUploadInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses=page_of(ModelSummaryOutputSerializer),
        operation_id="models_list",
        description="Summaries: each version's signature and report are on `/models/{name}/`.",
    )
    def get(self, request):
        models = selectors.model_list(membership=request_membership(request))
        return paginate(request, models, ModelSummaryOutputSerializer)

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={201: VersionOutputSerializer, 200: VersionOutputSerializer},
        description="201 with a new version; 200 with the existing one when the same file was uploaded before. "
        "A new model's first version is its production version at once when the caller may promote (so jobs may "
        "name the model alone); later versions are drafts. Every version can be named `name@N` at once.",
        operation_id="models_upload",
    )
    def post(self, request):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        version, created = services.model_version_upload(membership=membership, source=values.pop("file"), **values)
        return Response(
            {"model": version.model.name, **VersionOutputSerializer(version).data},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ModelDetailApi(APIView):
    required_scopes = {"GET": "models:read"}

    @extend_schema(responses=ModelOutputSerializer, operation_id="models_detail")
    def get(self, request, name):
        return Response(
            ModelOutputSerializer(selectors.model_get(membership=request_membership(request), name=name)).data
        )


class VersionPromoteApi(APIView):
    required_scopes = {"POST": "models:write"}

    class InputSerializer(serializers.Serializer):
        stage = serializers.ChoiceField(choices=Stage.choices)
        canary_weight = serializers.IntegerField(
            min_value=0,
            max_value=100,
            required=False,
            help_text="With stage staging: route this percent to it as canary.",
        )
        override_reason = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=2000,
            help_text="To send traffic (production, or a canary weight) to a compiled version whose validation "
            "report did not pass (owner, admin); recorded in the audit trail.",
        )
        reason = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=2000,
            help_text="Why: kept in the alias history and the audit trail (a rollback should say why).",
        )

        class Meta:
            ref_name = "ModelPromoteInput"

    @extend_schema(request=InputSerializer, responses=VersionOutputSerializer, operation_id="models_promote")
    def post(self, request, name, number):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = selectors.version_get(membership=membership, name=name, number=number)
        version = services.model_version_promote(membership=membership, version=version, **data.validated_data)
        return Response(VersionOutputSerializer(version).data)


class VersionArchiveApi(APIView):
    required_scopes = {"POST": "models:write"}

    @extend_schema(request=None, responses=VersionOutputSerializer, operation_id="models_archive")
    def post(self, request, name, number):
        membership = request_membership(request)
        version = selectors.version_get(membership=membership, name=name, number=number)
        version = services.model_version_promote(membership=membership, version=version, stage=Stage.ARCHIVED)
        return Response(VersionOutputSerializer(version).data)


class VersionCompileApi(APIView):
    """Start a compile job: the version compiled for a target, validated, registered as a new staging version."""

    required_scopes = {"POST": "models:write"}

    class InputSerializer(serializers.Serializer):
        target = serializers.ChoiceField(choices=TARGETS)
        tolerance = serializers.DictField(
            required=False, help_text="`max_abs_error` (or null) and `min_cosine`; defaults per target."
        )
        sample_inputs = serializers.DictField(
            required=False, help_text="Input name -> nested list; default: generated from the signature."
        )
        sample_rows = serializers.IntegerField(required=False, help_text="Rows of generated samples (1-4096).")
        seed = serializers.IntegerField(required=False, help_text="Seed of generated samples.")
        latency_runs = serializers.IntegerField(required=False, help_text="Timed runs each (3-1000).")
        priority = serializers.IntegerField(min_value=0, max_value=9, default=5)

        class Meta:
            ref_name = "ModelCompileInput"

    @extend_schema(request=InputSerializer, responses={202: JobOutputSerializer}, operation_id="models_compile")
    def post(self, request, name, number):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 128:
            raise serializers.ValidationError({"Idempotency-Key": ["At most 128 characters."]})
        version = selectors.version_get(membership=membership, name=name, number=number)
        job = services.model_version_compile(
            membership=membership, version=version, idempotency_key=key, **data.validated_data
        )
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class AliasEventOutputSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number", allow_null=True, default=None)
    previous_version = serializers.IntegerField(source="previous_version.number", allow_null=True, default=None)
    actor = serializers.CharField(source="actor.username", allow_null=True, default=None)
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = ModelAliasEvent
        fields = ["alias", "version", "previous_version", "weight", "actor", "reason", "at"]
        ref_name = "ModelAliasEvent"


class AliasHistoryApi(APIView):
    """Who moved which alias of the model to which version, when and why; newest first (a cursor page)."""

    required_scopes = {"GET": "models:read"}

    @extend_schema(
        parameters=PAGE_PARAMETERS,
        responses=page_of(AliasEventOutputSerializer),
        operation_id="models_alias_history",
    )
    def get(self, request, name):
        events = selectors.alias_history(membership=request_membership(request), name=name)
        return paginate(request, events, AliasEventOutputSerializer)


class AliasesAtApi(APIView):
    """What each alias of the model pointed at, at a given time (`?time=`, ISO 8601): "what was production at T?"."""

    required_scopes = {"GET": "models:read"}

    class OutputSerializer(serializers.Serializer):
        at = serializers.CharField()
        aliases = serializers.DictField(
            child=serializers.DictField(), help_text="alias -> {version, weight}; removed aliases are left out"
        )

        class Meta:
            ref_name = "ModelAliasesAt"

    @extend_schema(
        parameters=[OpenApiParameter("time", str, required=True, description="ISO 8601, e.g. 2026-01-31T12:00:00Z")],
        responses=OutputSerializer,
        operation_id="models_aliases_at",
    )
    def get(self, request, name):
        membership = request_membership(request)
        check_query_parameters(request, ("time",))
        time_text = request.query_params.get("time", "")
        at = parse_datetime(time_text)
        if at is None:
            raise serializers.ValidationError({"time": ["An ISO 8601 time, e.g. 2026-01-31T12:00:00Z."]})
        if timezone.is_naive(at):
            at = timezone.make_aware(at, datetime.UTC)
        aliases = selectors.aliases_at(membership=membership, name=name, at=at)
        return Response(
            {
                "at": time_text,
                "aliases": {
                    alias: {"version": event.version.number, "weight": event.weight} for alias, event in aliases.items()
                },
            }
        )


class AliasSetRemoveApi(APIView):
    """Point a named alias of the model at a version (`PUT`), or remove it (`DELETE`); jobs name `model@alias`."""

    required_scopes = {"PUT": "models:write", "DELETE": "models:write"}

    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField(min_value=1, help_text="The version number the alias points at.")
        reason = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        override_reason = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=2000,
            help_text="To point it at a compiled version whose validation report did not pass (owner, admin).",
        )

        class Meta:
            ref_name = "ModelAliasInput"

    class OutputSerializer(serializers.Serializer):
        alias = serializers.CharField(source="name")
        version = serializers.IntegerField(source="version.number")
        weight = serializers.IntegerField()

    @extend_schema(request=InputSerializer, responses=OutputSerializer, operation_id="models_alias_set")
    def put(self, request, name, alias):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        version = selectors.version_get(membership=membership, name=name, number=values.pop("version"))
        moved = services.model_alias_set(membership=membership, version=version, alias=alias, **values)
        return Response(self.OutputSerializer(moved).data)

    @extend_schema(request=None, responses={204: None}, operation_id="models_alias_remove")
    def delete(self, request, name, alias):
        membership = request_membership(request)
        model = selectors.model_get(membership=membership, name=name)
        services.model_alias_remove(membership=membership, model=model, alias=alias)
        return Response(status=status.HTTP_204_NO_CONTENT)
