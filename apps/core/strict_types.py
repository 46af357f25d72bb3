"""JSON request values taken at their JSON type: no "5" for an integer, no true for a number."""

from rest_framework import exceptions

# DRF coerces on input: "5" is an integer, "3.5" a float, "true" a boolean, 5 a string. A
# query string or a form has only strings, so that is right there; a JSON body has types,
# and a client that sends "priority": "5" has a bug it should hear about (generated
# clients and the schema both say integer). So data that came as JSON is taken at its type.
_JSON_TYPES = {
    "IntegerField": ((int,), "an integer"),
    "FloatField": ((int, float), "a number"),
    "BooleanField": ((bool,), "a boolean"),
    "CharField": ((str,), "a string"),
}


def _came_as_json(field) -> bool:
    from django.http import QueryDict

    data = getattr(field.root, "initial_data", None)
    return data is not None and not isinstance(data, QueryDict)


def _strict(original, types: tuple, name: str):
    def to_internal_value(self, data):
        if _came_as_json(self):
            wrong = not isinstance(data, types) or (isinstance(data, bool) and bool not in types)
            if wrong:
                raise exceptions.ValidationError(f"Must be {name}, not {_json_type_name(data)}.", code="invalid_type")
        return original(self, data)

    to_internal_value.strict_json = True
    return to_internal_value


def _json_type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def install_strict_json_types() -> None:
    """Called once from CoreConfig.ready(); subclasses (SlugField, EmailField, ...) inherit it."""
    from rest_framework import fields

    for class_name, (types, name) in _JSON_TYPES.items():
        field_class = getattr(fields, class_name)
        original = field_class.to_internal_value
        if not getattr(original, "strict_json", False):
            field_class.to_internal_value = _strict(original, types, name)
