from django.apps import AppConfig


class VmsConfig(AppConfig):
    """The desktops app: hosts, templates, quotas, desktops, consoles."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "vms"
    verbose_name = "Virtual desktops"
