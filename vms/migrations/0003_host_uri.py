"""Host.libvirt_uri becomes Host.uri (issue 11): its scheme picks the hypervisor backend
(vms.hypervisor.registry), and libvirt is only one of them. A rename: the values stay."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("vms", "0002_audit_append_only"),
    ]

    operations = [
        migrations.RenameField(model_name="host", old_name="libvirt_uri", new_name="uri"),
        migrations.AlterField(
            model_name="host",
            name="uri",
            field=models.CharField(
                help_text="How to reach the hypervisor, e.g. qemu:///system or "
                "qemu+ssh://root@hv1/system. The scheme picks the backend (docs/hypervisors.md).",
                max_length=255,
                verbose_name="URI",
            ),
        ),
    ]
