// Live job status and progress on admin pages, without a reload and without a build step.
//
// Elements carrying data-live-job="<job id>" and data-live-field="<field>" are refreshed
// from the admin's staff-only JSON view named by this script tag's data-jobs-url (which
// answers only for jobs the user may see); elements with data-live-queue="<queue>" from
// data-queues-url (the dashboard's queue counts). Polling stops once every job on the page
// has ended and no queue is shown, and pauses while the tab is hidden.
(function () {
  "use strict";
  var script = document.currentScript;
  var jobsUrl = script && script.dataset.jobsUrl;
  var queuesUrl = script && script.dataset.queuesUrl;
  var intervalMs = Number((script && script.dataset.intervalMs) || 2000);
  var ENDED = ["succeeded", "failed", "cancelled"];

  function liveJobIds() {
    var ids = {};
    document.querySelectorAll("[data-live-job]").forEach(function (el) {
      if (ENDED.indexOf(el.dataset.liveStatus) === -1) ids[el.dataset.liveJob] = true;
    });
    return Object.keys(ids).slice(0, 100);
  }

  function setText(el, text) {
    if (el.textContent !== text) el.textContent = text;
  }

  function showJob(id, job) {
    document.querySelectorAll('[data-live-job="' + id + '"]').forEach(function (el) {
      el.dataset.liveStatus = job.status;
      var field = el.dataset.liveField;
      if (field === "progress") {
        var percent = Math.round(job.progress * 100);
        var bar = el.querySelector("progress");
        if (bar) {
          bar.value = percent;
          bar.title = job.progress_message || "";
        }
        var label = el.querySelector("[data-live-percent]");
        if (label) setText(label, percent + "%");
      } else if (field === "status") {
        setText(el, job.status);
        el.className = "job-status job-status-" + job.status;
      } else if (field === "ended" && ENDED.indexOf(job.status) !== -1) {
        el.hidden = false;
      } else if (field in job && field !== "ended") {
        setText(el, job[field] === null || job[field] === "" ? "-" : String(job[field]));
      }
    });
  }

  function showQueues(rows) {
    rows.forEach(function (row) {
      document.querySelectorAll('[data-live-queue="' + row.queue + '"]').forEach(function (el) {
        var value = row[el.dataset.liveField];
        setText(el, value === null || value === undefined ? "-" : String(value));
      });
    });
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
      function (response) {
        if (!response.ok) throw new Error(url + " answered " + response.status);
        return response.json();
      }
    );
  }

  function poll() {
    var waits = [];
    var ids = jobsUrl ? liveJobIds() : [];
    if (ids.length) {
      var query = ids.map(function (id) { return "id=" + encodeURIComponent(id); }).join("&");
      waits.push(getJson(jobsUrl + "?" + query).then(function (body) {
        Object.keys(body.jobs).forEach(function (id) { showJob(id, body.jobs[id]); });
      }));
    }
    var queues = queuesUrl && document.querySelector("[data-live-queue]");
    if (queues) waits.push(getJson(queuesUrl).then(function (body) { showQueues(body.queues); }));
    if (!waits.length) return; // nothing left that can change
    Promise.all(waits)
      .catch(function (error) { console.warn("live update failed:", error); })
      .then(function () { window.setTimeout(schedule, intervalMs); });
  }

  function schedule() {
    if (document.hidden) {
      document.addEventListener("visibilitychange", schedule, { once: true });
    } else {
      poll();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { window.setTimeout(schedule, intervalMs); });
  } else {
    window.setTimeout(schedule, intervalMs);
  }
})();
