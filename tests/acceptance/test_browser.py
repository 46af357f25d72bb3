"""The admin and the API docs in a real browser: playwright driving Debian's chromium (never a downloaded one).

`make test` installs chromium through apt when it can (Makefile: `browser`); where it cannot,
these tests skip and say why.
"""

import os
import time
from urllib.parse import urlsplit

import pytest

from apps.jobs import services
from apps.jobs.models import Job

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PASSWORD = "browser-test-password-1"
# Progress is written at most every 0.2 s and cancellation noticed within a heartbeat.
FAST_WORKER = {"JOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2", "JOBS_HEARTBEAT_SECONDS": "0.5"}


def _why_no_browser() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements/dev.txt)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (as root), or set CHROMIUM"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _why_no_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; Django would take the test's
    # own (synchronous) ORM calls for calls from async code and refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def offline_page(browser, live_server):
    """A page that may reach only the live server: every other request is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    blocked: list[str] = []
    local = urlsplit(live_server.url).hostname

    def route(request_route, request):
        host = urlsplit(request.url).hostname
        if host in (local, "localhost", "127.0.0.1") or request.url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:
            blocked.append(request.url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.blocked = blocked
    yield page
    context.close()


# Boxes that hide what does not fit (Django's .form-row, for one): content wider than the box is cut off.
CUT_OFF = """
[...document.querySelectorAll("#content *")]
  .filter(el => ["hidden", "clip"].includes(getComputedStyle(el).overflowX) && el.scrollWidth > el.clientWidth + 1)
  .map(el => `${el.tagName.toLowerCase()}.${el.className}: ${el.scrollWidth}px in ${el.clientWidth}px`)
"""


def log_in(page, live_server, user) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")


def operator(member):
    from apps.accounts.models import Role

    membership, _ = member(Role.OPERATOR)
    user = membership.user
    user.is_staff = user.is_superuser = True
    user.set_password(PASSWORD)
    user.save()
    return membership


def progress_of(page, job) -> int:
    return page.evaluate(
        "id => document.querySelector(`[data-live-job='${id}'][data-live-field=progress] progress`).value",
        str(job.pk),
    )


def test_a_running_jobs_admin_page_shows_progress_live_and_cancel_ends_it(
    offline_page, live_server, start_worker, member
):
    page = offline_page
    membership = operator(member)
    worker = start_worker("cpu", env=FAST_WORKER)
    job, _ = services.job_submit(membership=membership, kind="sleep", params={"duration_s": 120, "steps": 240})
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=job.pk).progress < 0.01:
        assert time.monotonic() < deadline, f"the job never made progress:\n{worker.log()[-3000:]}"
        time.sleep(0.2)

    log_in(page, live_server, membership.user)
    page.goto(f"{live_server.url}/admin/jobs/job/{job.pk}/change/")
    page.evaluate("window.loadedOnce = true")  # gone if the page were reloaded
    first = progress_of(page, job)
    page.wait_for_function(
        "([id, first]) => document.querySelector(`[data-live-job='${id}'][data-live-field=progress] progress`).value"
        " > first",
        arg=[str(job.pk), first],
        timeout=30_000,
    )
    assert page.evaluate("window.loadedOnce") is True
    assert progress_of(page, job) > first

    with page.expect_navigation():
        page.click("button.job-operation-cancel")  # a POST form: the job page comes back after it
    assert "Cancel: done" in page.inner_text("ul.messagelist")
    page.wait_for_function(
        "id => document.querySelector(`[data-live-job='${id}'][data-live-field=status]`)?.textContent === 'cancelled'",
        arg=str(job.pk),
        timeout=60_000,
    )
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    assert page.blocked == []


def test_admin_pages_fit_a_1400_pixel_window(offline_page, live_server, member):
    page = offline_page
    membership = operator(member)
    params = {"duration_s": 1, "steps": 1}
    job, _ = services.job_submit(membership=membership, kind="sleep", params=params)
    services.job_claim(job_id=job.id, worker="cpu@" + "a-very-long-worker-host-name-" * 4)
    result = {"matrix": [["x" * 30 for _ in range(30)] for _ in range(3)], "note": "y" * 3000}
    services.job_finish(job_id=job.id, attempt=1, status="succeeded", worker="cpu@w", result=result)
    # Unbroken tokens (paths, digests, base64) are what no table or form row can wrap on its own.
    long_token = "/data/artifacts/" + "abcdef0123456789" * 40
    failed, _ = services.job_submit(membership=membership, kind="sleep", params=params, idempotency_key="k" * 120)
    services.job_claim(job_id=failed.id, worker="cpu@w")
    services.job_progress(job_id=failed.id, attempt=1, progress=0.5, message=long_token)
    error = {"code": "internal_error", "message": long_token, "details": {"traceback": long_token}}
    services.job_finish(job_id=failed.id, attempt=1, status="failed", worker="cpu@w", error=error, result=result)
    services.worker_host_register(
        hostname="gpu@" + "h" * 80,
        queues=["gpu"],
        capabilities={"providers": ["CPUExecutionProvider"]},
        version="t",
        pid=1,
    )
    log_in(page, live_server, membership.user)
    for path in (
        "/admin/jobs/job/",
        f"/admin/jobs/job/{job.pk}/change/",
        "/admin/operations/",
        "/admin/jobs/workerhost/",
    ):
        page.goto(f"{live_server.url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a 1400px window"
        assert page.evaluate(CUT_OFF) == [], f"{path} cuts content off"
    assert page.blocked == []


def test_swagger_ui_and_redoc_render_with_no_network(offline_page, live_server):
    page = offline_page
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".opblock", timeout=60_000)
    assert page.locator(".opblock").count() > 20  # every operation of the API, drawn
    page.goto(f"{live_server.url}/api/redoc/")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached", timeout=60_000)
    assert page.locator("[data-section-id^='operation/']").count() > 20
    assert page.blocked == [], f"needed the network: {page.blocked}"
