from django.apps import AppConfig


class VmsConfig(AppConfig):
    """The desktops app: hosts, templates, quotas, desktops, consoles."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "vms"
    verbose_name = "Virtual desktops"

    def ready(self) -> None:
        from vms import checks  # noqa: F401 - registers the system checks
