from django.urls import path

from apps.agents.api import scenario_views, views

urlpatterns = [
    path("agents/", views.AgentListCreateApi.as_view(), name="agents"),
    path("agents/<int:agent_id>/", views.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<int:agent_id>/similar", views.AgentSimilarApi.as_view(), name="agent-similar"),
    path("agents/<int:agent_id>/memories/", views.MemoryListCreateApi.as_view(), name="agent-memories"),
    path("agents/<int:agent_id>/memories/search", views.MemorySearchApi.as_view(), name="agent-memories-search"),
    path("agents/<int:agent_id>/memories/import", views.MemoryImportApi.as_view(), name="agent-memories-import"),
    path("scenarios/", scenario_views.ScenarioListCreateApi.as_view(), name="scenarios"),
    path("scenarios/<int:scenario_id>/", scenario_views.ScenarioDetailApi.as_view(), name="scenario-detail"),
    path("scenarios/<int:scenario_id>/runs", scenario_views.ScenarioRunsApi.as_view(), name="scenario-runs"),
    path("scenarios/<int:scenario_id>/sweeps", scenario_views.ScenarioSweepApi.as_view(), name="scenario-sweeps"),
]
