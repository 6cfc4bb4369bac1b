// armwheels dashboard: refreshes the overview, runs the rebuild form, tails live logs.
// Vanilla JS, nothing fetched from elsewhere. Untrusted text is only set via textContent.
"use strict";

(function () {
  // --- the overview: re-fetch the live fragment every 2 s and swap it in ---------------
  function refreshOverview(main) {
    var url = main.getAttribute("data-fragment");
    var busy = false;
    setInterval(function () {
      if (busy) {
        return;
      }
      busy = true;
      fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (response) {
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null) {
            main.innerHTML = html; // rendered and escaped by the server
          }
        })
        .catch(function () {})
        .then(function () {
          busy = false;
        });
    }, 2000);
  }

  // --- the rebuild form: POST with the token, show the outcome -------------------------
  function buildLinks(container, jobs) {
    var list = document.createElement("ul");
    jobs.forEach(function (job) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.className = "build-link";
      link.href = "/builds/" + encodeURIComponent(job.id);
      link.textContent = "#" + job.id + " " + job.arch + " " + job.python_tag + " (" + job.state + ")";
      item.appendChild(link);
      list.appendChild(item);
    });
    container.appendChild(list);
  }

  function rebuildForm(form) {
    var result = document.getElementById("rebuild-result");
    var button = document.getElementById("rebuild");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var token = document.getElementById("token").value.trim();
      var target = document.getElementById("rebuild-target").value;
      var version = document.getElementById("rebuild-version").value.trim();
      var body = {};
      if (target) {
        body.target = target;
      }
      if (version) {
        body.version = version;
      }
      result.className = "";
      result.textContent = "sending…";
      button.disabled = true;
      fetch(form.getAttribute("data-action"), {
        method: "POST",
        headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      })
        .then(function (response) {
          return response
            .json()
            .catch(function () {
              return { error: "HTTP " + response.status };
            })
            .then(function (data) {
              return { ok: response.ok, status: response.status, data: data };
            });
        })
        .then(function (answer) {
          result.textContent = "";
          if (answer.ok) {
            var data = answer.data;
            var head = document.createElement("p");
            head.textContent = data.duplicate
              ? "already waiting: " + data.project + " " + data.version
              : "queued " + data.created + " job(s) for " + data.project + " " + data.version;
            result.className = "ok";
            result.appendChild(head);
            buildLinks(result, data.jobs || []);
          } else {
            result.className = "error";
            result.textContent = (answer.data && answer.data.error) || "HTTP " + answer.status;
          }
        })
        .catch(function (error) {
          result.className = "error";
          result.textContent = "request failed: " + error;
        })
        .then(function () {
          button.disabled = false;
        });
    });
  }

  // --- a build's log: tail it while the job is building ----------------------------------
  function tailLog(pre) {
    var logUrl = pre.getAttribute("data-log");
    var jobUrl = pre.getAttribute("data-job");
    var stateEl = document.getElementById("state");
    var offset = 0; // bytes of the log we have
    var logId = null;
    var decoder = new TextDecoder("utf-8");
    var live = true;
    var busy = false;
    pre.textContent = "";

    function readLog() {
      return fetch(logUrl + "?offset=" + offset, { cache: "no-store" }).then(function (response) {
        var total = parseInt(response.headers.get("X-Log-Total") || "", 10);
        var id = response.headers.get("X-Log-Id");
        if (id && logId !== null && id !== logId) {
          // Another attempt or the final log replaced the one we tailed: read it anew.
          logId = id;
          offset = 0;
          decoder = new TextDecoder("utf-8");
          pre.textContent = "";
          return readLog();
        }
        if (id) {
          logId = id;
        }
        if (response.status === 416) {
          if (!isNaN(total) && total < offset) {
            offset = 0;
            decoder = new TextDecoder("utf-8");
            pre.textContent = "";
          }
          return null;
        }
        if (!response.ok) {
          return null; // no log yet
        }
        return response.arrayBuffer().then(function (buffer) {
          if (buffer.byteLength) {
            var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            pre.appendChild(document.createTextNode(decoder.decode(buffer, { stream: true })));
            if (atBottom) {
              pre.scrollTop = pre.scrollHeight;
            }
          }
          offset = !isNaN(total) && total > offset ? total : offset + buffer.byteLength;
        });
      });
    }

    function readState() {
      return fetch(jobUrl, { cache: "no-store" })
        .then(function (response) {
          return response.ok ? response.json() : null;
        })
        .then(function (job) {
          if (job && job.state) {
            stateEl.textContent = job.state;
            stateEl.className = "state state-" + job.state;
            if (job.state !== "building") {
              live = false;
            }
          }
        });
    }

    var timer = setInterval(function () {
      if (busy) {
        return;
      }
      busy = true;
      var wasLive = live;
      readLog()
        .then(readState)
        .then(function () {
          if (!live) {
            pre.setAttribute("data-live", "false");
            clearInterval(timer);
            // One last read: the final log replaces the live one when the result lands.
            if (wasLive) {
              return readLog();
            }
          }
          return null;
        })
        .catch(function () {})
        .then(function () {
          busy = false;
        });
    }, 1000);
  }

  function start() {
    var main = document.getElementById("live");
    if (main && main.getAttribute("data-fragment")) {
      refreshOverview(main);
    }
    var form = document.getElementById("rebuild-form");
    if (form) {
      rebuildForm(form);
    }
    var pre = document.getElementById("log");
    if (pre && pre.getAttribute("data-live") === "true") {
      tailLog(pre);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
