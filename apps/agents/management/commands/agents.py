"""`manage.py agents create|list|show|remember|import|search|similar|embedder`: agents from the command line."""

import json
import sys
from pathlib import Path

from django.core.management.base import CommandError

from apps.accounts.cli import USAGE_ERROR, MemberCommand, add_actor_arguments
from apps.agents import selectors, services
from apps.agents.api.views import AgentOutputSerializer
from apps.agents.models import AgentKind, MemoryKind
from apps.jobs.cli import EXIT_CODES, print_outcome, wait_for_job
from workers.memory_file import FORMATS

# The selectors order by pgvector's cosine distance (1 - cosine similarity, 0..2). People read
# a similarity better: 1 is the same direction, 0 unrelated, -1 opposite.
SIMILARITY_HEADING = "cosine similarity: 1.0 same direction, 0 unrelated, higher is closer"


def cosine_similarity(distance: float) -> float:
    return 1.0 - distance


def _json_argument(name: str):
    def parse(raw: str):
        try:
            return json.loads(Path(raw[1:]).read_text() if raw.startswith("@") else raw)
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"--{name}: not valid JSON ({exc})", returncode=USAGE_ERROR) from exc

    return parse


class Command(MemberCommand):
    help = (
        "Create and list agents, add or import memories (an import is a `memory_import` job), search an agent's "
        "memories by text, find similar agents, and install the shipped text embedder. Exit code 2 when the "
        "command is used wrongly or the request is refused (the reason is printed); `import --wait` exits with "
        "the job's outcome (0 succeeded, 1 failed, 3 cancelled)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="create an agent (its persona is embedded when no vector is given)")
        create.add_argument("name")
        create.add_argument("--kind", choices=AgentKind.values, required=True)
        create.add_argument("--persona", default="", help="who the agent is, in prose")
        create.add_argument("--traits", type=_json_argument("traits"), default={}, help='JSON, e.g. {"openness": 0.8}')
        create.add_argument("--config", type=_json_argument("config"), default={}, help="JSON object, or @file.json")

        listing = sub.add_parser("list", help="list the organization's agents")
        listing.add_argument("--kind", choices=AgentKind.values, help="only agents of this kind")

        show = sub.add_parser("show", help="show one agent as JSON with its memory count")
        show.add_argument("agent", help="agent id or name")

        remember = sub.add_parser("remember", help="add one memory (its text is embedded)")
        remember.add_argument("agent", help="agent id or name")
        remember.add_argument("text")
        remember.add_argument("--kind", choices=MemoryKind.values, default=MemoryKind.OBSERVATION)
        remember.add_argument("--importance", type=float, default=0.5, help="0 to 1 (default 0.5)")

        load = sub.add_parser("import", help="import memories from a JSONL or CSV file as a job")
        load.add_argument("agent", help="agent id or name")
        load.add_argument("path", type=Path, help="fields: text (required), kind, importance, created_at, embedding")
        load.add_argument("--format", choices=FORMATS, help="default: from the file name")
        load.add_argument("--batch-size", type=int, default=64, help="rows per step (default 64)")
        load.add_argument("--wait", action="store_true", help="wait with a progress bar; exit with the outcome")

        search = sub.add_parser(
            "search", help="an agent's memories nearest to a text, by cosine similarity (higher is closer)"
        )
        search.add_argument("agent", help="agent id or name")
        search.add_argument("query", help="text to search for")
        search.add_argument("-k", type=int, default=10, help="how many (1-100, default 10)")
        search.add_argument("--kind", choices=MemoryKind.values, help="only memories of this kind")
        search.add_argument("--min-importance", type=float, help="only memories at least this important")
        search.add_argument("--after", help="only memories created at or after this ISO date-time")
        search.add_argument("--before", help="only memories created before this ISO date-time")

        similar = sub.add_parser("similar", help="agents nearest to this one, by cosine similarity (higher is closer)")
        similar.add_argument("agent", help="agent id or name")
        similar.add_argument("-k", type=int, default=10, help="how many (1-100, default 10)")

        embedder = sub.add_parser(
            "embedder", help="install: register the shipped all-MiniLM-L6-v2 (int8) as the production embedding model"
        )
        embedder.add_argument("operation", choices=["install"])
        embedder.add_argument("--name", default="minilm-l6-v2", help="model name in the registry")

        for action in sub.choices.values():
            add_actor_arguments(action)

    def _agent(self, membership, reference: str):
        agents = selectors.agent_list(membership=membership)
        agent = agents.filter(pk=int(reference)).first() if reference.isdigit() else None
        agent = agent or agents.filter(name=reference).first()
        if agent is None:
            raise CommandError(f"agent: no agent '{reference}' in this organization", returncode=USAGE_ERROR)
        return agent

    def _create(self, membership, options):
        agent = services.agent_create(
            membership=membership,
            name=options["name"],
            kind=options["kind"],
            persona=options["persona"],
            traits=options["traits"],
            config=options["config"],
        )
        self.stdout.write(f"created agent {agent.pk} {agent.name} ({agent.kind}) embedding={agent.embedding_source}")

    def _list(self, membership, options):
        agents = selectors.agent_list(membership=membership)
        if options["kind"]:
            agents = agents.filter(kind=options["kind"])
        for agent in agents.defer("embedding"):
            self.stdout.write(f"{agent.pk:>6}  {agent.name:24} {agent.kind:18} {agent.created_at:%Y-%m-%d %H:%M}")

    def _show(self, membership, options):
        agent = self._agent(membership, options["agent"])
        data = AgentOutputSerializer(agent).data
        data["memories"] = selectors.memory_list(membership=membership, agent=agent).count()
        self.stdout.write(json.dumps(data, indent=2, default=str))

    def _remember(self, membership, options):
        memory = services.memory_create(
            membership=membership,
            agent=self._agent(membership, options["agent"]),
            text=options["text"],
            kind=options["kind"],
            importance=options["importance"],
        )
        self.stdout.write(f"memory {memory.pk} ({memory.kind}, importance {memory.importance})")

    def _import(self, membership, options):
        path = options["path"]
        if not path.is_file():
            raise CommandError(f"path: no such file {path}", returncode=USAGE_ERROR)
        job = services.memory_import_submit(
            membership=membership,
            agent=self._agent(membership, options["agent"]),
            source=path,
            filename=path.name,
            fmt=options["format"],
            batch_size=options["batch_size"],
        )
        self.stdout.write(f"submitted {job.id} (memory_import of {job.params['rows']} rows on {job.queue})")
        if options["wait"]:
            job = wait_for_job(job, None)
            print_outcome(self, job)
            sys.exit(EXIT_CODES.get(job.status, 1))

    def _search(self, membership, options):
        from django.utils.dateparse import parse_datetime

        bounds = {}
        for option, key in (("after", "created_after"), ("before", "created_before")):
            if options[option]:
                moment = parse_datetime(options[option])
                if moment is None:
                    raise CommandError(f"--{option}: not an ISO date-time", returncode=USAGE_ERROR)
                bounds[key] = moment
        results = selectors.memory_search(
            membership=membership,
            agent=self._agent(membership, options["agent"]),
            text=options["query"],
            k=options["k"],
            kind=options["kind"],
            min_importance=options["min_importance"],
            **bounds,
        )
        self.stdout.write(SIMILARITY_HEADING)
        self.stdout.write(f"{'SIMILARITY':>10}  {'KIND':12} {'IMPORTANCE':>10}  TEXT")
        for memory in results:
            self.stdout.write(
                f"{cosine_similarity(memory.distance):>10.4f}  {memory.kind:12} {memory.importance:>10.2f}  "
                f"{memory.text[:90]}"
            )

    def _similar(self, membership, options):
        agent = self._agent(membership, options["agent"])
        self.stdout.write(SIMILARITY_HEADING)
        self.stdout.write(f"{'SIMILARITY':>10}  {'ID':>6}  {'NAME':24} KIND")
        for other in selectors.agent_similar(membership=membership, agent=agent, k=options["k"]):
            self.stdout.write(
                f"{cosine_similarity(other.distance):>10.4f}  {other.pk:>6}  {other.name:24} {other.kind}"
            )

    def _embedder(self, membership, options):
        version, created = services.embedding_model_install(membership=membership, name=options["name"])
        verb = "installed" if created else "already installed:"
        self.stdout.write(f"{verb} {version} ({version.model.task}, {version.stage})")
