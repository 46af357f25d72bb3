#!/usr/bin/env python
"""Django's command-line utility for Switchyard."""

import argparse
import os
import sys

# manage.py -v N -> root log level. A command's output is for the person who ran it: the
# INFO records services write for the servers' logs (`job.submitted`, ...) would only bury
# it, so they show from -v 2 on. Warnings and errors always do, on stderr.
_LOG_LEVELS = {"0": "ERROR", "1": "WARNING", "2": "INFO", "3": "DEBUG"}
# Servers whose log is their output keep LOG_LEVEL.
_SERVER_COMMANDS = {"runserver"}


def command_log_level(argv: list[str]) -> str | None:
    """The log level a command line asks for with -v/--verbosity (WARNING when it does not); None for servers."""
    if len(argv) < 2 or argv[1] in _SERVER_COMMANDS:
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-v", "--verbosity", default="1")
    known, _ = parser.parse_known_args(argv[2:])
    # A bad value is left for Django's own parser to report.
    return _LOG_LEVELS.get(known.verbosity, "WARNING")


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")
    level = command_log_level(sys.argv)
    if level:
        # Read by project/settings/base.py's LOGGING (the handler writes to stderr).
        os.environ["LOG_LEVEL"] = level
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
