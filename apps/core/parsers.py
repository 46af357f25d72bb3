"""The API's request parser: JSON, with a bound on nesting."""

from rest_framework import exceptions
from rest_framework.parsers import JSONParser

# Deeper JSON than this is refused before a serializer walks it (json.loads itself gives up
# with RecursionError near 1,000 levels, which would otherwise be a 500).
MAX_JSON_DEPTH = 64


class JSONBodyParser(JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than MAX_JSON_DEPTH with a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as error:
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.") from error
        # Iterative, so the check itself cannot overflow the stack.
        pending = [(data, 1)]
        while pending:
            value, depth = pending.pop()
            if depth > MAX_JSON_DEPTH:
                raise exceptions.ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.")
            if isinstance(value, dict):
                pending.extend((item, depth + 1) for item in value.values())
            elif isinstance(value, list):
                pending.extend((item, depth + 1) for item in value)
        return data
