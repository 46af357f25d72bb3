"""REST endpoints for schedules: thin wrappers over apps.jobs.services.schedules and selectors."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import request_membership
from apps.core.pagination import PAGE_PARAMETERS, page_of, paginate
from apps.jobs import selectors, services
from apps.jobs.api.serializers import ScheduleOutputSerializer
from apps.jobs.models import CatchUp

WHEN_HELP = "Give exactly one of `cron` (5 fields, in `timezone`) and `interval_seconds`."


class ScheduleListCreateApi(APIView):
    """List the organization's schedules, or create one: its job is checked now as a submit would check it."""

    required_scopes = {"GET": "jobs:read", "POST": "jobs:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, help_text="Unique in the organization.")
        kind = serializers.CharField(max_length=64, help_text="The job kind to submit, e.g. `sleep`.")
        params = serializers.JSONField(default=dict, help_text="The job's params, validated per kind.")
        priority = serializers.IntegerField(min_value=0, max_value=9, default=5)
        cron = serializers.CharField(max_length=100, default="", allow_blank=True, help_text=WHEN_HELP)
        interval_seconds = serializers.IntegerField(
            min_value=1, required=False, allow_null=True, default=None, help_text=WHEN_HELP
        )
        timezone = serializers.CharField(max_length=64, default="UTC", help_text="IANA name, e.g. Europe/Berlin.")
        catch_up = serializers.ChoiceField(
            choices=CatchUp.choices,
            default=CatchUp.FIRE_ONCE,
            help_text="After missed periods (the dispatcher was down): fire_once fires one job, skip fires none.",
        )
        enabled = serializers.BooleanField(default=True)

        class Meta:
            ref_name = "ScheduleCreateInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(ScheduleOutputSerializer), operation_id="schedules_list"
    )
    def get(self, request):
        schedules = selectors.schedule_list(membership=request_membership(request))
        return paginate(request, schedules, ScheduleOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: ScheduleOutputSerializer}, operation_id="schedules_create")
    def post(self, request):
        membership = request_membership(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = services.schedule_create(membership=membership, **data.validated_data)
        return Response(ScheduleOutputSerializer(schedule).data, status=status.HTTP_201_CREATED)


class ScheduleDetailApi(APIView):
    """One schedule; PATCH changes it (`enabled: false` pauses, `true` resumes from the next period), DELETE
    removes it (its jobs stay). Someone else's schedule needs `schedules.manage_any`.
    """

    required_scopes = {"GET": "jobs:read", "PATCH": "jobs:write", "DELETE": "jobs:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        kind = serializers.CharField(max_length=64, required=False)
        params = serializers.JSONField(required=False)
        priority = serializers.IntegerField(min_value=0, max_value=9, required=False)
        cron = serializers.CharField(max_length=100, required=False, allow_blank=True, help_text=WHEN_HELP)
        interval_seconds = serializers.IntegerField(min_value=1, required=False, allow_null=True, help_text=WHEN_HELP)
        timezone = serializers.CharField(max_length=64, required=False)
        catch_up = serializers.ChoiceField(choices=CatchUp.choices, required=False)
        enabled = serializers.BooleanField(required=False)

        class Meta:
            ref_name = "ScheduleUpdateInput"

    @extend_schema(responses=ScheduleOutputSerializer, operation_id="schedules_detail")
    def get(self, request, schedule_id):
        schedule = selectors.schedule_get(membership=request_membership(request), schedule_id=schedule_id)
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(request=InputSerializer, responses=ScheduleOutputSerializer, operation_id="schedules_update")
    def patch(self, request, schedule_id):
        membership = request_membership(request)
        schedule = selectors.schedule_get(membership=membership, schedule_id=schedule_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = services.schedule_update(actor=membership, schedule=schedule, **data.validated_data)
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(responses={204: None}, operation_id="schedules_delete")
    def delete(self, request, schedule_id):
        membership = request_membership(request)
        schedule = selectors.schedule_get(membership=membership, schedule_id=schedule_id)
        services.schedule_delete(actor=membership, schedule=schedule)
        return Response(status=status.HTTP_204_NO_CONTENT)
