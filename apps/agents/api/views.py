"""REST endpoints for agents, memories and similarity search: thin wrappers over services and selectors."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import request_membership
from apps.agents import selectors, services
from apps.agents.models import Agent, AgentKind, Memory, MemoryKind
from apps.core.pagination import PAGE_PARAMETERS, page_of, paginate
from apps.jobs.api.serializers import JobOutputSerializer
from workers.memory_file import FORMATS


class AgentOutputSerializer(serializers.ModelSerializer):
    has_embedding = serializers.SerializerMethodField()

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "kind",
            "persona",
            "traits",
            "config",
            "has_embedding",
            "embedding_source",
            "created_at",
            "updated_at",
        ]

    def get_has_embedding(self, agent) -> bool:
        return agent.embedding is not None


class MemoryOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Memory
        fields = ["id", "text", "kind", "importance", "created_at", "embedding_source", "import_job"]


class MemoryHitSerializer(MemoryOutputSerializer):
    distance = serializers.FloatField(help_text="Cosine distance, 0 (same direction) to 2.")

    class Meta(MemoryOutputSerializer.Meta):
        fields = [*MemoryOutputSerializer.Meta.fields, "distance"]


class AgentHitSerializer(AgentOutputSerializer):
    distance = serializers.FloatField(help_text="Cosine distance, 0 (same direction) to 2.")

    class Meta(AgentOutputSerializer.Meta):
        fields = [*AgentOutputSerializer.Meta.fields, "distance"]


def _vector_field(**kwargs):
    # Numbers are checked by the service (dimension, finite, not zero) so the reason is precise.
    return serializers.ListField(child=serializers.JSONField(), **kwargs)


class AgentListCreateApi(APIView):
    """List the organization's agents, or create one."""

    required_scopes = {"GET": "agents:read", "POST": "agents:write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        kind = serializers.ChoiceField(choices=AgentKind.choices)
        persona = serializers.CharField(required=False, default="", allow_blank=True)
        traits = serializers.JSONField(required=False, default=dict, help_text="Name -> number in [0, 1].")
        config = serializers.JSONField(required=False, default=dict)
        embedding = _vector_field(required=False, help_text="Optional vector; else the persona is embedded.")

        class Meta:
            ref_name = "AgentCreateInput"

    @extend_schema(
        parameters=[OpenApiParameter("kind", str, enum=AgentKind.values), *PAGE_PARAMETERS],
        responses=page_of(AgentOutputSerializer),
        operation_id="agents_list",
    )
    def get(self, request):
        agents = selectors.agent_list(membership=request_membership(request))
        kind = request.query_params.get("kind")
        if kind is not None:
            if kind not in AgentKind.values:
                raise serializers.ValidationError({"kind": [f"Must be one of: {', '.join(AgentKind.values)}."]})
            agents = agents.filter(kind=kind)
        return paginate(request, agents, AgentOutputSerializer, allowed=["kind"])

    @extend_schema(request=InputSerializer, responses={201: AgentOutputSerializer}, operation_id="agents_create")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        agent = services.agent_create(membership=request_membership(request), **data.validated_data)
        return Response(AgentOutputSerializer(agent).data, status=status.HTTP_201_CREATED)


class AgentDetailApi(APIView):
    required_scopes = {"GET": "agents:read"}

    @extend_schema(responses=AgentOutputSerializer, operation_id="agents_detail")
    def get(self, request, agent_id):
        agent = selectors.agent_get(membership=request_membership(request), agent_id=agent_id)
        return Response(AgentOutputSerializer(agent).data)


class MemoryListCreateApi(APIView):
    """An agent's memories, newest first (cursor pagination), or add one."""

    required_scopes = {"GET": "agents:read", "POST": "agents:write"}

    class InputSerializer(serializers.Serializer):
        text = serializers.CharField(trim_whitespace=True)
        kind = serializers.ChoiceField(choices=MemoryKind.choices, default=MemoryKind.OBSERVATION)
        importance = serializers.FloatField(min_value=0, max_value=1, default=0.5)
        embedding = _vector_field(required=False, help_text="Optional vector; else the text is embedded.")
        created_at = serializers.DateTimeField(required=False)

        class Meta:
            ref_name = "MemoryCreateInput"

    @extend_schema(
        parameters=PAGE_PARAMETERS, responses=page_of(MemoryOutputSerializer), operation_id="agents_memories_list"
    )
    def get(self, request, agent_id):
        membership = request_membership(request)
        agent = selectors.agent_get(membership=membership, agent_id=agent_id)
        memories = selectors.memory_list(membership=membership, agent=agent).defer("embedding")
        return paginate(request, memories, MemoryOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: MemoryOutputSerializer}, operation_id="agents_memories_add")
    def post(self, request, agent_id):
        membership = request_membership(request)
        agent = selectors.agent_get(membership=membership, agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        memory = services.memory_create(membership=membership, agent=agent, **data.validated_data)
        return Response(MemoryOutputSerializer(memory).data, status=status.HTTP_201_CREATED)


class SearchFilters(serializers.Serializer):
    k = serializers.IntegerField(min_value=1, max_value=selectors.MAX_K, default=10)
    kind = serializers.ChoiceField(choices=MemoryKind.choices, required=False)
    min_importance = serializers.FloatField(min_value=0, max_value=1, required=False)
    created_after = serializers.DateTimeField(required=False, help_text="Inclusive.")
    created_before = serializers.DateTimeField(required=False, help_text="Exclusive.")


class MemorySearchApi(APIView):
    """An agent's memories nearest to a text (GET ?q=) or a vector (POST), with filters that keep recall."""

    required_scopes = {"GET": "agents:read", "POST": "agents:read"}

    class TextInputSerializer(SearchFilters):
        q = serializers.CharField(
            trim_whitespace=True,
            help_text="Text to embed with the organization's production embedding model.",
            error_messages={"blank": "Empty text: nothing to search for.", "required": "Give the text as q."},
        )

        class Meta:
            ref_name = "MemoryTextSearchInput"

    class VectorInputSerializer(SearchFilters):
        vector = _vector_field(help_text="A query vector of AGENTS_EMBEDDING_DIM numbers (384 by default).")

        class Meta:
            ref_name = "MemoryVectorSearchInput"

    class OutputSerializer(serializers.Serializer):
        results = MemoryHitSerializer(many=True)

        class Meta:
            ref_name = "MemorySearchOutput"

    @extend_schema(
        parameters=[TextInputSerializer], responses=OutputSerializer, operation_id="agents_memories_search_text"
    )
    def get(self, request, agent_id):
        return self._search(request, agent_id, self.TextInputSerializer(data=request.query_params), "q", "text")

    @extend_schema(
        request=VectorInputSerializer, responses=OutputSerializer, operation_id="agents_memories_search_vector"
    )
    def post(self, request, agent_id):
        return self._search(request, agent_id, self.VectorInputSerializer(data=request.data), "vector", "vector")

    def _search(self, request, agent_id, data, field: str, argument: str):
        membership = request_membership(request)
        agent = selectors.agent_get(membership=membership, agent_id=agent_id)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        values[argument] = values.pop(field)
        results = selectors.memory_search(membership=membership, agent=agent, **values)
        return Response({"results": MemoryHitSerializer(results, many=True).data})


class AgentSimilarApi(APIView):
    """Agents of the organization nearest to this one (cosine distance of their embeddings)."""

    required_scopes = {"GET": "agents:read"}

    class InputSerializer(serializers.Serializer):
        k = serializers.IntegerField(min_value=1, max_value=selectors.MAX_K, default=10)
        kind = serializers.ChoiceField(choices=AgentKind.choices, required=False)

        class Meta:
            ref_name = "AgentSimilarInput"

    class OutputSerializer(serializers.Serializer):
        results = AgentHitSerializer(many=True)

        class Meta:
            ref_name = "AgentSimilarOutput"

    @extend_schema(parameters=[InputSerializer], responses=OutputSerializer, operation_id="agents_similar")
    def get(self, request, agent_id):
        membership = request_membership(request)
        agent = selectors.agent_get(membership=membership, agent_id=agent_id)
        data = self.InputSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        results = selectors.agent_similar(membership=membership, agent=agent, **data.validated_data)
        return Response({"results": AgentHitSerializer(results, many=True).data})


class MemoryImportApi(APIView):
    """Upload a JSONL or CSV file of memories; answers 202 with the `memory_import` job that imports it."""

    required_scopes = {"POST": "agents:write"}

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(
            help_text="JSONL (one object per line) or CSV with a header; fields text (required), kind, "
            "importance, created_at, embedding."
        )
        format = serializers.ChoiceField(choices=FORMATS, required=False, help_text="Default: from the file name.")
        batch_size = serializers.IntegerField(min_value=1, max_value=1024, default=64)

        class Meta:
            ref_name = "MemoryImportInput"

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        responses={202: JobOutputSerializer},
        operation_id="agents_memories_import",
    )
    def post(self, request, agent_id):
        membership = request_membership(request)
        agent = selectors.agent_get(membership=membership, agent_id=agent_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        job = services.memory_import_submit(
            membership=membership,
            agent=agent,
            source=upload,
            filename=upload.name,
            fmt=data.validated_data.get("format"),
            batch_size=data.validated_data["batch_size"],
        )
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)
