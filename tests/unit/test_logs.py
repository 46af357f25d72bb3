import io
import json
import logging
import logging.config

from django.conf import settings


def _logger_with(formatter: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    config = {
        **settings.LOGGING,
        "handlers": {"console": {**settings.LOGGING["handlers"]["console"], "formatter": formatter, "stream": stream}},
    }
    config["handlers"]["console"]["class"] = "logging.StreamHandler"
    config["root"] = {"handlers": ["console"], "level": "INFO"}
    logging.config.dictConfig(config)
    return logging.getLogger("apps.jobs.services"), stream


def test_json_lines_carry_the_context_given_as_extra():
    try:
        logger, stream = _logger_with("json")
        logger.info("job.claimed", extra={"job_id": "abc", "attempt": 2, "worker": "cpu@h"})
        record = json.loads(stream.getvalue().strip())
        assert record["message"] == "job.claimed" and record["level"] == "INFO"
        assert record["job_id"] == "abc" and record["attempt"] == 2 and record["worker"] == "cpu@h"
        assert record["logger"] == "apps.jobs.services"
    finally:
        logging.config.dictConfig(settings.LOGGING)


def test_plain_lines_keep_the_context_visible():
    try:
        logger, stream = _logger_with("plain")
        logger.info("job.finished", extra={"job_id": "abc", "status": "succeeded"})
        assert stream.getvalue().strip().endswith("job.finished job_id=abc status=succeeded")
    finally:
        logging.config.dictConfig(settings.LOGGING)
