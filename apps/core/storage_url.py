"""ARTIFACT_STORAGE_URL -> the STORAGES["default"] entry; read by the settings, so it imports no Django.

(unset)                      local disk under MEDIA_ROOT (`make run`, one host)
file:///abs/path             local disk under /abs/path (a shared mount when several hosts use it)
s3://bucket/prefix?endpoint_url=http://host:9000&region_name=eu-west-1
                             S3-compatible object storage through django-storages (boto3);
                             credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
                             boto3's other usual sources), never from the URL
"""

from urllib.parse import parse_qsl, unquote, urlsplit

LOCAL_BACKEND = "apps.core.artifact_storage.LocalArtifactStorage"
S3_BACKEND = "apps.core.artifact_storage.S3ArtifactStorage"

# The query parameters an s3:// URL may carry, each an S3Storage option of the same name.
S3_OPTIONS = {
    "endpoint_url": "the S3 API's address, e.g. http://minio:9000 (default: AWS)",
    "region_name": "the bucket's region",
    "addressing_style": "path or virtual",
    "signature_version": "e.g. s3v4",
    "verify": "false (no TLS verification) or the path of a CA bundle",
}


class StorageUrlError(ValueError):
    """ARTIFACT_STORAGE_URL cannot be used; the message says why and what is expected."""


def storage_config(url: str) -> dict:
    """The STORAGES entry for `url`; StorageUrlError (a clear one-line reason) when it is unusable."""
    url = (url or "").strip()
    if not url:
        return {"BACKEND": LOCAL_BACKEND}
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") or parts.query:
            raise StorageUrlError(
                f"ARTIFACT_STORAGE_URL: {url!r} is not file:///absolute/path (three slashes, no host, no query)."
            )
        return {"BACKEND": LOCAL_BACKEND, "OPTIONS": {"location": unquote(parts.path)}}
    if parts.scheme == "s3":
        bucket = parts.hostname or ""
        if not bucket or parts.username or parts.password or parts.port:
            why = "credentials do not belong in the URL (use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            if not bucket:
                why = "the bucket is missing"
            raise StorageUrlError(f"ARTIFACT_STORAGE_URL: s3://bucket/prefix expected; {why}.")
        options = {"bucket_name": bucket, "location": unquote(parts.path).strip("/")}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in S3_OPTIONS:
                known = ", ".join(sorted(S3_OPTIONS))
                raise StorageUrlError(f"ARTIFACT_STORAGE_URL: unknown parameter {name!r} (known: {known}).")
            if not value:
                raise StorageUrlError(f"ARTIFACT_STORAGE_URL: parameter {name!r} has no value.")
            options[name] = value
        if "endpoint_url" in options:
            endpoint = urlsplit(options["endpoint_url"])
            if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
                raise StorageUrlError(
                    f"ARTIFACT_STORAGE_URL: endpoint_url {options['endpoint_url']!r} is not an http(s):// address."
                )
        if "verify" in options:
            options["verify"] = False if options["verify"].lower() in ("false", "0", "no") else options["verify"]
        return {"BACKEND": S3_BACKEND, "OPTIONS": options}
    raise StorageUrlError(
        f"ARTIFACT_STORAGE_URL: scheme {parts.scheme or '(none)'!r} is not supported; "
        "use file:///absolute/path or s3://bucket/prefix?endpoint_url=..."
    )


def storage_where(url: str) -> str:
    """The URL as it may be shown (it never holds credentials, but an endpoint's user part is dropped too)."""
    url = (url or "").strip()
    if not url:
        return "local disk (MEDIA_ROOT)"
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname or "").geturl()
