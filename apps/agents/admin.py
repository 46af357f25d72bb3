from django import forms
from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from apps.accounts.permissions import MANAGE_AGENTS, MANAGE_SCENARIOS, READ_AGENTS, READ_SCENARIOS
from apps.agents.models import Agent, Memory, Scenario
from apps.agents.services import scenario_spec_clean
from apps.core.admin import OrganizationScopedAdmin, ReadOnlyTabularInline
from apps.core.errors import DomainError


def _vector_preview(vector) -> str:
    if vector is None:
        return "-"
    head = ", ".join(f"{x:.3f}" for x in vector[:4])
    return f"[{head}, …] ({len(vector)} dims)"


class RecentMemoryInline(ReadOnlyTabularInline):
    model = Memory
    fields = ["text", "kind", "importance", "created_at", "embedding_source"]
    show_change_link = True
    max_num = 20
    ordering = ["-created_at"]


@admin.register(Agent)
class AgentAdmin(OrganizationScopedAdmin):
    view_action = READ_AGENTS
    change_action = MANAGE_AGENTS
    list_display = ["name", "organization", "kind", "embedding_source", "created_by", "created_at"]
    list_filter = ["kind", "organization"]
    search_fields = ["name", "persona"]
    list_select_related = ["organization", "created_by"]
    # Vectors are written by the services (client vector or the embedding model), never typed in.
    exclude = ["embedding"]
    readonly_fields = ["embedding_preview", "embedding_source", "created_by", "created_at", "updated_at"]
    inlines = [RecentMemoryInline]

    @admin.display(description="embedding")
    def embedding_preview(self, agent) -> str:
        return _vector_preview(agent.embedding)


@admin.register(Memory)
class MemoryAdmin(OrganizationScopedAdmin):
    organization_path = "agent__organization"
    view_action = READ_AGENTS
    change_action = MANAGE_AGENTS
    list_display = ["__str__", "agent", "kind", "importance", "embedding_source", "created_at"]
    list_filter = ["kind", "embedding_source"]
    search_fields = ["text", "agent__name"]
    list_select_related = ["agent"]
    date_hierarchy = "created_at"
    exclude = ["embedding"]
    readonly_fields = ["agent", "embedding_preview", "embedding_source", "import_job", "import_line"]

    @admin.display(description="embedding")
    def embedding_preview(self, memory) -> str:
        return _vector_preview(memory.embedding)

    def has_add_permission(self, request):
        # A memory needs a vector; the API, the CLI and imports compute or check it.
        return False


class ScenarioForm(forms.ModelForm):
    class Meta:
        model = Scenario
        fields = ["organization", "name", "description", "spec"]

    def clean_spec(self):
        # The same rules as the API and the CLI; the stored spec is the normalised one.
        try:
            return scenario_spec_clean(self.cleaned_data["spec"])
        except DomainError as exc:
            raise forms.ValidationError(
                [f"{name}: {'; '.join(errors)}" for name, errors in exc.fields.items()]
            ) from exc


@admin.register(Scenario)
class ScenarioAdmin(OrganizationScopedAdmin):
    view_action = READ_SCENARIOS
    change_action = MANAGE_SCENARIOS
    form = ScenarioForm
    list_display = ["name", "organization", "rounds", "topology", "events", "runs_link", "updated_at"]
    list_filter = ["organization"]
    search_fields = ["name", "description"]
    list_select_related = ["organization"]
    readonly_fields = ["created_by", "created_at", "updated_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="rounds")
    def rounds(self, scenario):
        return scenario.spec.get("rounds")

    @admin.display(description="topology")
    def topology(self, scenario):
        return (scenario.spec.get("topology") or {}).get("type")

    @admin.display(description="events")
    def events(self, scenario):
        return len(scenario.spec.get("events") or [])

    @admin.display(description="runs")
    def runs_link(self, scenario):
        url = reverse("admin:jobs_job_changelist")
        return format_html('<a href="{}?scenario={}">runs and sweeps</a>', url, scenario.pk)
