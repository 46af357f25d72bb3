"""REST endpoints for scenarios and their runs and sweeps: thin wrappers over services and selectors."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import request_membership
from apps.agents import selectors, services
from apps.agents.models import Scenario
from apps.agents.simulation_kind import SWEEP_METRICS
from apps.core.pagination import PAGE_PARAMETERS, page_of, paginate
from apps.jobs.api.serializers import JobOutputSerializer, JobSummaryOutputSerializer
from apps.jobs.api.views import IDEMPOTENCY_KEY_PARAMETER, idempotency_key


class ScenarioOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Scenario
        fields = ["id", "name", "description", "spec", "created_by", "created_at", "updated_at"]


def _submitted(job, created: bool) -> Response:
    return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ScenarioListCreateApi(APIView):
    """List the organization's scenarios, or save one (its spec is validated: 400 names each bad field)."""

    required_scopes = {"GET": "scenarios:read", "POST": "scenarios:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, default="", allow_blank=True)
        spec = serializers.JSONField(help_text="rounds, topology, parameters, events (docs/simulations.md).")

        class Meta:
            ref_name = "ScenarioCreateInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(ScenarioOutputSerializer), operation_id="scenarios_list"
    )
    def get(self, request):
        scenarios = selectors.scenario_list(membership=request_membership(request))
        return paginate(request, scenarios, ScenarioOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: ScenarioOutputSerializer}, operation_id="scenarios_create")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scenario = services.scenario_create(membership=request_membership(request), **data.validated_data)
        return Response(ScenarioOutputSerializer(scenario).data, status=status.HTTP_201_CREATED)


class ScenarioDetailApi(APIView):
    required_scopes = {"GET": "scenarios:read", "PATCH": "scenarios:write", "DELETE": "scenarios:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100, required=False)
        description = serializers.CharField(required=False, allow_blank=True)
        spec = serializers.JSONField(required=False)

        class Meta:
            ref_name = "ScenarioUpdateInput"

    @extend_schema(responses=ScenarioOutputSerializer, operation_id="scenarios_detail")
    def get(self, request, scenario_id):
        scenario = selectors.scenario_get(membership=request_membership(request), scenario_id=scenario_id)
        return Response(ScenarioOutputSerializer(scenario).data)

    @extend_schema(request=InputSerializer, responses=ScenarioOutputSerializer, operation_id="scenarios_update")
    def patch(self, request, scenario_id):
        membership = request_membership(request)
        scenario = selectors.scenario_get(membership=membership, scenario_id=scenario_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scenario = services.scenario_update(membership=membership, scenario=scenario, **data.validated_data)
        return Response(ScenarioOutputSerializer(scenario).data)

    @extend_schema(responses={204: None}, operation_id="scenarios_delete")
    def delete(self, request, scenario_id):
        membership = request_membership(request)
        scenario = selectors.scenario_get(membership=membership, scenario_id=scenario_id)
        services.scenario_delete(membership=membership, scenario=scenario)
        return Response(status=status.HTTP_204_NO_CONTENT)


class _AgentsAndSeed(serializers.Serializer):
    agent_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), required=False, help_text="Default: every agent."
    )
    seed = serializers.IntegerField(min_value=0, required=False, help_text="Default: drawn and recorded.")
    priority = serializers.IntegerField(min_value=0, max_value=9, default=5)


class ScenarioRunsApi(APIView):
    """A scenario's runs and sweeps (newest first), or start a run: a `simulation` job."""

    required_scopes = {"GET": "jobs:read", "POST": "jobs:write"}

    class InputSerializer(_AgentsAndSeed):
        overrides = serializers.DictField(
            child=serializers.FloatField(), required=False, help_text="Parameter values replacing the scenario's."
        )

        class Meta:
            ref_name = "ScenarioRunInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(JobSummaryOutputSerializer), operation_id="scenarios_runs_list"
    )
    def get(self, request, scenario_id):
        membership = request_membership(request)
        scenario = selectors.scenario_get(membership=membership, scenario_id=scenario_id)
        runs = selectors.scenario_runs(membership=membership, scenario=scenario)
        return paginate(request, runs, JobSummaryOutputSerializer)

    @extend_schema(
        request=InputSerializer,
        responses={201: JobOutputSerializer, 200: JobOutputSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        operation_id="scenarios_run",
    )
    def post(self, request, scenario_id):
        membership = request_membership(request)
        scenario = selectors.scenario_get(membership=membership, scenario_id=scenario_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job, created = services.simulation_submit(
            membership=membership, scenario=scenario, idempotency_key=idempotency_key(request), **data.validated_data
        )
        return _submitted(job, created)


class ScenarioSweepApi(APIView):
    """Start a parameter sweep of a scenario: a `simulation_sweep` job whose children are the runs."""

    required_scopes = {"POST": "jobs:write"}

    class InputSerializer(_AgentsAndSeed):
        grid = serializers.DictField(
            child=serializers.ListField(child=serializers.FloatField()),
            help_text='Parameter -> values, e.g. {"learning_rate": [0.05, 0.1, 0.2]}; 1 to 3 parameters.',
        )
        replications = serializers.IntegerField(min_value=1, max_value=100, default=3)
        chart_metric = serializers.ChoiceField(choices=SWEEP_METRICS, required=False)

        class Meta:
            ref_name = "ScenarioSweepInput"

    @extend_schema(
        request=InputSerializer,
        responses={201: JobOutputSerializer, 200: JobOutputSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        operation_id="scenarios_sweep",
    )
    def post(self, request, scenario_id):
        membership = request_membership(request)
        scenario = selectors.scenario_get(membership=membership, scenario_id=scenario_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job, created = services.sweep_submit(
            membership=membership, scenario=scenario, idempotency_key=idempotency_key(request), **data.validated_data
        )
        return _submitted(job, created)
