"""ARTIFACT_STORAGE_URL: each accepted form and the one-line reason for each refused one."""

import pytest

from apps.core.storage_url import LOCAL_BACKEND, S3_BACKEND, StorageUrlError, storage_config


def test_unset_is_the_local_disk_under_media_root():
    assert storage_config("") == {"BACKEND": LOCAL_BACKEND}


def test_a_file_url_is_the_local_disk_at_that_folder():
    assert storage_config("file:///srv/switchyard%20files") == {
        "BACKEND": LOCAL_BACKEND,
        "OPTIONS": {"location": "/srv/switchyard files"},
    }


def test_an_s3_url_gives_bucket_prefix_and_connection_options():
    config = storage_config(
        "s3://artifacts/prod/switchyard/?endpoint_url=http://minio:9000&region_name=eu-west-1&addressing_style=path"
    )
    assert config == {
        "BACKEND": S3_BACKEND,
        "OPTIONS": {
            "bucket_name": "artifacts",
            "location": "prod/switchyard",
            "endpoint_url": "http://minio:9000",
            "region_name": "eu-west-1",
            "addressing_style": "path",
        },
    }
    assert storage_config("s3://b?verify=false")["OPTIONS"]["verify"] is False


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "scheme 'ftp' is not supported"),
        ("/srv/files", "scheme '(none)' is not supported"),
        ("s3:///prefix", "the bucket is missing"),
        ("s3://key:secret@bucket/prefix", "credentials do not belong in the URL"),
        ("s3://bucket/p?endpont_url=http://x", "unknown parameter 'endpont_url'"),
        ("s3://bucket/p?region_name=", "parameter 'region_name' has no value"),
        ("s3://bucket/p?endpoint_url=minio:9000", "is not an http(s):// address"),
        ("file://relative/path", "is not file:///absolute/path"),
        ("file:///srv?x=1", "is not file:///absolute/path"),
    ],
)
def test_a_bad_url_is_refused_with_its_reason(url, message):
    with pytest.raises(StorageUrlError, match=r"^ARTIFACT_STORAGE_URL: ") as refused:
        storage_config(url)
    assert message in str(refused.value)
