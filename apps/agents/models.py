"""Agents and their memories, each with an embedding in a pgvector column under an HNSW (cosine) index."""

from django.conf import settings
from django.contrib.postgres.indexes import OpClass
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone
from pgvector.django import HalfVectorField, HnswIndex, VectorField

from apps.accounts.models import Organization

# pgvector's defaults; `manage.py bench vectors` measured recall@10 0.95 at ef_search 64 and
# 0.98 at 100 with them on 100k x 384 (docs/benchmarks.md): no reason to pay a slower build.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64


def half_precision(field: str = "embedding") -> Cast:
    """A vector column as halfvec: what the HNSW indexes hold and what searches order by.

    The column keeps float32; the index stores half the bytes per vector, so a search walks
    half the pages for the same recall (decision 0013). Queries must use this exact
    expression for the planner to pick the index.
    """
    return Cast(field, HalfVectorField(dimensions=settings.AGENTS_EMBEDDING_DIM))


def _hnsw_cosine_index(name: str) -> HnswIndex:
    return HnswIndex(
        OpClass(half_precision(), name="halfvec_cosine_ops"),
        name=name,
        m=HNSW_M,
        ef_construction=HNSW_EF_CONSTRUCTION,
    )


class AgentKind(models.TextChoices):
    CODE = "code", "Code"
    RESEARCH = "research", "Research"
    ANALYSIS = "analysis", "Analysis"
    CREATIVE = "creative", "Creative"
    TEST = "test", "Test"
    USER_PROXY = "user-proxy", "User proxy"
    PARTNER = "partner", "Partner"
    SCENARIO_GENERATOR = "scenario-generator", "Scenario generator"


class MemoryKind(models.TextChoices):
    OBSERVATION = "observation", "Observation"
    REFLECTION = "reflection", "Reflection"
    PLAN = "plan", "Plan"
    CONVERSATION = "conversation", "Conversation"
    FACT = "fact", "Fact"


class Agent(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="agents")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=AgentKind.choices)
    persona = models.TextField(blank=True, help_text="Who the agent is, in prose; embedded when no vector is given.")
    traits = models.JSONField(default=dict, blank=True, help_text="Name -> value in [0, 1], e.g. the Big Five.")
    config = models.JSONField(default=dict, blank=True)
    embedding = VectorField(dimensions=settings.AGENTS_EMBEDDING_DIM, null=True, blank=True)
    # "client" or the model version that computed it ("name@N"): vectors of different
    # models live in different spaces and must not be compared.
    embedding_source = models.CharField(max_length=120, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="agent_unique_name_per_org")]
        indexes = [_hnsw_cosine_index("agent_embedding_hnsw")]

    def __str__(self) -> str:
        return self.name


class Memory(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="memories")
    text = models.TextField()
    embedding = VectorField(dimensions=settings.AGENTS_EMBEDDING_DIM)
    embedding_source = models.CharField(max_length=120, blank=True)
    importance = models.FloatField(default=0.5)
    kind = models.CharField(max_length=16, choices=MemoryKind.choices, default=MemoryKind.OBSERVATION)
    created_at = models.DateTimeField(default=timezone.now)
    # Set by an import job: (job, line) identifies a row, so a retried attempt skips what
    # an earlier attempt already inserted instead of duplicating it.
    import_job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    import_line = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "memories"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(importance__gte=0.0, importance__lte=1.0), name="memory_importance_0_1"
            ),
            models.UniqueConstraint(fields=["import_job", "import_line"], name="memory_unique_import_line"),
        ]
        indexes = [
            _hnsw_cosine_index("memory_embedding_hnsw"),
            # An agent with few memories is searched exactly through this index (the planner's
            # choice) rather than walking the HNSW graph of every agent's memories.
            models.Index(fields=["agent", "created_at"], name="memory_agent_created"),
        ]

    def __str__(self) -> str:
        return self.text[:60]


class Scenario(models.Model):
    """A template for simulations: rounds, interaction topology, parameters and timed events.

    The spec is validated on every save by `apps.agents.services.scenario_create/update`
    (the rules live with the engine, in `workers.simulation.validate_spec`); a job snapshots
    the validated spec into its params, so editing a scenario never changes a past run.
    """

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="scenarios")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    spec = models.JSONField(help_text="rounds, topology, parameters, events: see docs/simulations.md")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="scenario_unique_name_per_org")]

    def __str__(self) -> str:
        return self.name
