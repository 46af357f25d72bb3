from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "apps.agents"
    label = "agents"
    verbose_name = "Agents and memories"

    def ready(self):
        from apps.agents.import_kind import MEMORY_IMPORT
        from apps.agents.simulation_kind import SIMULATION, SIMULATION_SWEEP
        from apps.jobs.kinds import register

        register(MEMORY_IMPORT)
        register(SIMULATION)
        register(SIMULATION_SWEEP)
