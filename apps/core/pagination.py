"""One pagination style for every API list: newest first, by cursor, with a bounded page size.

A list answers `{"next", "previous", "results"}`; `next` and `previous` are full URLs with
an opaque `cursor`. Query parameters are checked, not ignored: a garbage cursor, a page
size out of range or a parameter the list does not know answers 400 naming it, so a
typo in a filter never silently returns the whole list.
"""

from functools import cache

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PAGINATION_PARAMETERS = ("cursor", "page_size")
OLDEST_FIRST = ("created_at", "id")  # a job's events and artifacts read in the order they happened


class NewestFirstCursor(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE

    def get_page_size(self, request) -> int:
        given = request.query_params.get(self.page_size_query_param)
        if given is None:
            return self.page_size
        if not given.isdigit() or not 1 <= int(given) <= self.max_page_size:
            raise exceptions.ValidationError(
                {"page_size": [f"Must be an integer from 1 to {self.max_page_size}; got {given[:40]!r}."]}
            )
        return int(given)

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound as error:
            raise exceptions.ValidationError(
                {"cursor": ["Invalid cursor: use the `next` or `previous` link as given."]}
            ) from error

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except (DjangoValidationError, ValueError, TypeError, OverflowError) as error:
            # A well-formed cursor whose position is not a value of the ordering column.
            raise exceptions.ValidationError(
                {"cursor": ["Invalid cursor: use the `next` or `previous` link as given."]}
            ) from error


def check_query_parameters(request, allowed) -> None:
    """400 naming the first query parameter that this list does not know."""
    known = set(allowed) | set(PAGINATION_PARAMETERS)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise exceptions.ValidationError(
            {unknown[0][:64]: [f"Unknown query parameter. This list accepts: {', '.join(sorted(known))}."]}
        )


def paginate(request, queryset, serializer_class, *, allowed=(), context=None, ordering=None) -> Response:
    """Check the query parameters, take one page of `queryset` and answer it serialized."""
    check_query_parameters(request, allowed)
    paginator = NewestFirstCursor()
    if ordering is not None:
        paginator.ordering = ordering
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(serializer_class(page, many=True, context=context or {}).data)


@cache
def page_of(serializer_class) -> type[serializers.Serializer]:
    """The schema of one page of `serializer_class` items (a component named Paginated<Name>List)."""
    meta = getattr(serializer_class, "Meta", None)
    base = getattr(meta, "ref_name", None) or serializer_class.__name__.removesuffix("Serializer")
    name = f"Paginated{base}List"
    return type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null on the last one."),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null on the first."),
            "results": serializer_class(many=True),
            "Meta": type("Meta", (), {"ref_name": name}),
            "__module__": serializer_class.__module__,
        },
    )


PAGE_PARAMETERS = [
    OpenApiParameter("cursor", OpenApiTypes.STR, description="Opaque; take it from a page's `next` or `previous`."),
    OpenApiParameter(
        "page_size", OpenApiTypes.INT, description=f"Items per page, 1 to {MAX_PAGE_SIZE} (default {PAGE_SIZE})."
    ),
]
