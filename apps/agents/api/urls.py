from django.urls import path

from apps.agents.api import views

urlpatterns = [
    path("agents/", views.AgentListCreateApi.as_view(), name="agents"),
    path("agents/<int:agent_id>/", views.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<int:agent_id>/similar", views.AgentSimilarApi.as_view(), name="agent-similar"),
    path("agents/<int:agent_id>/memories/", views.MemoryListCreateApi.as_view(), name="agent-memories"),
    path("agents/<int:agent_id>/memories/search", views.MemorySearchApi.as_view(), name="agent-memories-search"),
    path("agents/<int:agent_id>/memories/import", views.MemoryImportApi.as_view(), name="agent-memories-import"),
]
