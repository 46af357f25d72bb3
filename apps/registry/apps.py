from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "apps.registry"
    label = "registry"
    verbose_name = "Model registry"

    def ready(self):
        from apps.jobs.kinds import register
        from apps.registry.compile_kind import COMPILE
        from apps.registry.inference_kind import INFERENCE

        register(INFERENCE)
        register(COMPILE)
