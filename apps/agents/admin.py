from django.contrib import admin

from apps.agents.models import Agent, Memory
from apps.core.admin import OrganizationScopedAdmin, ReadOnlyTabularInline


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
