"""`manage.py models upload|list|show|promote|archive`: the model registry from the command line."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, add_actor_arguments, resolve_membership, usage_error
from apps.core.errors import DomainError
from apps.registry import selectors, services
from apps.registry.api.views import ModelOutputSerializer
from apps.registry.models import DevicePreference, ModelTask, Stage


class Command(BaseCommand):
    help = (
        "Upload ONNX models as versions, list and show them, promote a version to a stage or archive it. "
        "Exit code 2 when the command is used wrongly or the registry refuses (the reason is printed)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        upload = sub.add_parser("upload", help="validate an ONNX file and register it as the model's next version")
        upload.add_argument("path", type=Path, help="the .onnx file")
        upload.add_argument("--name", required=True, help="model name (lowercase letters, digits, '-', '_')")
        upload.add_argument("--task", choices=ModelTask.values, default=ModelTask.GENERIC, help="default: generic")
        upload.add_argument("--description", default="", help="what the model does")
        upload.add_argument(
            "--device",
            choices=DevicePreference.values,
            default=DevicePreference.AUTO,
            help="where it may run (default: auto)",
        )
        sub.add_parser("list", help="list models with their versions and aliases")
        show = sub.add_parser("show", help="show one model as JSON")
        show.add_argument("name")
        promote = sub.add_parser("promote", help="move NAME@N to a stage (production moves the alias)")
        promote.add_argument("reference", help="NAME@N")
        promote.add_argument("--stage", choices=Stage.values, required=True)
        promote.add_argument("--canary-weight", type=int, help="with --stage staging: percent of traffic as canary")
        archive = sub.add_parser("archive", help="archive NAME@N (drops its aliases)")
        archive.add_argument("reference", help="NAME@N")
        for action in sub.choices.values():
            add_actor_arguments(action)

    def handle(self, *args, action, **options):
        membership = resolve_membership(options)
        try:
            getattr(self, f"_{action}")(membership, options)
        except DomainError as exc:
            raise usage_error(exc) from exc

    def _upload(self, membership, options):
        version, created = services.model_version_upload(
            membership=membership,
            name=options["name"],
            source=options["path"],
            task=options["task"],
            description=options["description"],
            device_preference=options["device"],
        )
        verb = "registered" if created else "already registered as"
        self.stdout.write(f"{verb} {version} sha256={version.sha256[:12]} size={version.size_bytes}")
        for direction in ("inputs", "outputs"):
            for tensor in version.signature[direction]:
                self.stdout.write(f"  {direction[:-1]:6} {tensor['name']:20} {tensor['dtype']:8} {tensor['shape']}")

    def _list(self, membership, options):
        for model in selectors.model_list(membership=membership):
            aliases = ", ".join(f"{a.name}=@{a.version.number}" for a in model.aliases.select_related("version"))
            versions = ", ".join(f"@{v.number}:{v.stage}" for v in model.versions.all())
            self.stdout.write(f"{model.name:24} {model.task:14} {versions}  {aliases}")

    def _show(self, membership, options):
        model = selectors.model_get(membership=membership, name=options["name"])
        self.stdout.write(json.dumps(ModelOutputSerializer(model).data, indent=2, default=str))

    def _version(self, membership, reference: str):
        name, _, number = reference.partition("@")
        if not number.isdigit():
            raise CommandError(f"reference: expected NAME@N, got '{reference}'", returncode=USAGE_ERROR)
        return selectors.version_get(membership=membership, name=name, number=int(number))

    def _promote(self, membership, options):
        version = services.model_version_promote(
            membership=membership,
            version=self._version(membership, options["reference"]),
            stage=options["stage"],
            canary_weight=options["canary_weight"],
        )
        self.stdout.write(f"{version} {version.stage}")

    def _archive(self, membership, options):
        version = services.model_version_promote(
            membership=membership, version=self._version(membership, options["reference"]), stage=Stage.ARCHIVED
        )
        self.stdout.write(f"{version} {version.stage}")
