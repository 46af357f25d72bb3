"""Response headers for the whole site: nothing under /api/ is ever stored by a browser or proxy."""

from django.utils.cache import add_never_cache_headers

API_PREFIX = "/api/"


class ApiNoStoreMiddleware:
    """`Cache-Control: no-store` (and no-cache, private) on every API answer, errors included.

    A token's secret is shown once in the create response; results, audit rows and member
    lists are per-user. None of it may sit in a shared proxy or the browser's disk cache.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith(API_PREFIX):
            add_never_cache_headers(response)
        return response
