"""`manage.py models upload|list|show|promote|archive`: the model registry from the command line."""

import json
import sys
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.cli import USAGE_ERROR, add_actor_arguments, resolve_membership, usage_error
from apps.core.errors import DomainError
from apps.jobs.cli import wait_for_job
from apps.registry import selectors, services
from apps.registry.api.views import ModelOutputSerializer
from apps.registry.models import DevicePreference, ModelTask, Stage
from workers.compile_targets import TARGETS

# `compile --wait`: 0 compiled and passed, 1 failed, 3 cancelled, 4 timed out, 5 compiled but
# the report did not pass (a staging version exists; promoting it needs an override).
EXIT_FAILED, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_REPORT_FAILED = 1, 3, 4, 5


class Command(BaseCommand):
    help = (
        "Upload ONNX models as versions, list and show them, promote a version to a stage or archive it, "
        "compile a version for a target. Exit code 2 when the command is used wrongly or the registry refuses "
        "(the reason is printed); `compile --wait`: 0 compiled and passed, 1 failed, 3 cancelled, 4 timed out, "
        "5 compiled but its report did not pass."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        upload = sub.add_parser(
            "upload",
            help="validate an ONNX file and register it as the model's next version (a new model's first version "
            "becomes production when you may promote; later ones are drafts, usable as NAME@N at once)",
        )
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
        promote.add_argument(
            "--override-reason",
            default="",
            help="send traffic (production, or a canary weight) to a compiled version whose report did not pass "
            "(owner, admin); audited",
        )
        promote.add_argument(
            "--reason", default="", help="why: kept in the alias history and the audit trail (say why for a rollback)"
        )
        compile_ = sub.add_parser(
            "compile", help="compile NAME@N for a target into a new staging version, validated against NAME@N"
        )
        compile_.add_argument("reference", help="NAME@N, the source version")
        compile_.add_argument("--target", choices=TARGETS, required=True, help="what to compile for")
        compile_.add_argument("--max-abs-error", type=float, help="tolerance: largest absolute output error")
        compile_.add_argument("--min-cosine", type=float, help="tolerance: smallest mean cosine similarity")
        compile_.add_argument(
            "--samples", type=Path, help=".npz (one array per input) or .json validation inputs; default: generated"
        )
        compile_.add_argument("--sample-rows", type=int, help="rows of generated samples (default 32)")
        compile_.add_argument("--seed", type=int, help="seed of generated samples (default 0)")
        compile_.add_argument("--latency-runs", type=int, help="timed runs of source and result each (default 20)")
        compile_.add_argument("--wait", action="store_true", help="wait with a progress bar; print the report")
        compile_.add_argument("--timeout", type=float, help="with --wait: give up after N seconds (exit 4)")
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
        name = version.model.name
        if version.stage == Stage.PRODUCTION:
            self.stdout.write(f"  {version} is production: jobs naming '{name}' run it")
        else:
            self.stdout.write(
                f"  {version} is {version.stage}: jobs name it '{version}'; "
                f"'{name}' alone needs a production version (models promote {version} --stage production)"
            )
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
            override_reason=options["override_reason"],
            reason=options["reason"],
        )
        self.stdout.write(f"{version} {version.stage}")

    def _compile(self, membership, options):
        tolerance = {key: options[key] for key in ("max_abs_error", "min_cosine") if options[key] is not None} or None
        job = services.model_version_compile(
            membership=membership,
            version=self._version(membership, options["reference"]),
            target=options["target"],
            tolerance=tolerance,
            sample_inputs=_load_samples(options["samples"]) if options["samples"] else None,
            sample_rows=options["sample_rows"],
            seed=options["seed"],
            latency_runs=options["latency_runs"],
        )
        self.stdout.write(f"submitted compile job {job.id} ({options['reference']} -> {options['target']})")
        if not options["wait"]:
            return
        job = wait_for_job(job, options["timeout"])
        if job.status == "succeeded":
            report = job.result["report"]
            self.stdout.write(
                f"{job.result['model']} {'passed' if report['passed'] else 'did not pass'}: "
                f"max_abs_error={report['max_abs_error']} mean_cosine={report['mean_cosine']} "
                f"latency_p50_ms={report['latency_p50_ms_before']}->{report['latency_p50_ms_after']} "
                f"speedup={report['speedup']} size={report['size_bytes_before']}->{report['size_bytes_after']}"
            )
            for failure in report["failures"]:
                self.stdout.write(f"  {failure}")
            if not report["passed"]:
                sys.exit(EXIT_REPORT_FAILED)
            return
        if job.error:
            self.stderr.write(f"{job.status}: {job.error.get('code')}: {job.error.get('message')}")
        sys.exit(EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED)

    def _archive(self, membership, options):
        version = services.model_version_promote(
            membership=membership, version=self._version(membership, options["reference"]), stage=Stage.ARCHIVED
        )
        self.stdout.write(f"{version} {version.stage}")


def _load_samples(path: Path) -> dict:
    if not path.is_file():
        raise CommandError(f"--samples: no such file {path}", returncode=USAGE_ERROR)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name].tolist() for name in archive.files}
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CommandError(f"--samples: cannot read {path} ({exc})", returncode=USAGE_ERROR) from exc
