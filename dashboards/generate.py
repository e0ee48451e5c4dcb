#!/usr/bin/env python3
"""Writes the Grafana dashboards in dashboards/json/ (run it after editing; commit both).

The panels share a handful of shapes (an InfluxQL target, a time series, a table, a template
variable), so they are written once here instead of by hand five times over. Conventions the
tests (tests/dashboards.rs) rely on:
- every identifier in a query is double-quoted ("ping", "loss_pct", "target"): the structural
  test checks each against the README's measurement schema;
- every selected expression is named with AS "…": the data test checks those columns come back;
- the data source is referenced by its provisioned uid, `vantage-influxdb`.
Standard library only: python3 dashboards/generate.py
(`--check`: write nothing, exit 1 if a committed file differs from what this script writes;
tests/dashboards.rs runs it.)
"""

import json
import pathlib
import sys

DS = {"type": "influxdb", "uid": "vantage-influxdb"}
OUT = pathlib.Path(__file__).resolve().parent / "json"

# Loss (percent): green below 1%, then yellow, orange, red from 20%.
LOSS_STEPS = [(None, "green"), (1, "yellow"), (5, "orange"), (20, "red")]


def thresholds(steps):
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def target(ref, query, fmt="time_series", alias=None):
    t = {
        "refId": ref,
        "datasource": DS,
        "query": " ".join(query.split()),
        "rawQuery": True,
        "resultFormat": fmt,
    }
    if alias:
        t["alias"] = alias
    return t


def variable(name, label, query, multi=True):
    """A query variable; multi-value ones offer "All" (every value, as Grafana's (a|b) regex)."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new agents and targets appear
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
        "options": [],
    }


def timeseries(title, targets, unit, description="", overrides=(), stack=False, **extra):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "spanNulls": False,
              "showPoints": "never"}
    if stack:
        custom.update(stacking={"mode": "normal", "group": "A"}, fillOpacity=60)
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": list(overrides)},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        **extra,
    }


def table(title, targets, description="", unit=None, steps=None, transformations=(),
          overrides=(), **extra):
    defaults = {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}}
    if unit:
        defaults["unit"] = unit
    if steps:
        defaults["thresholds"] = thresholds(steps)
        defaults["custom"]["cellOptions"] = {"type": "color-background", "mode": "basic"}
    return {
        "type": "table",
        "title": title,
        "description": description,
        "targets": targets,
        "transformations": list(transformations),
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {"showHeader": True, "cellHeight": "sm"},
        **extra,
    }


def override(name, **properties):
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in properties.items()]}


def sort_by(field, desc):
    return {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": field, "desc": desc}]}}


def annotation(name, color, query, title, text, tags):
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "iconColor": color,
        "target": {**target("Anno", query, "table"), "fromAnnotations": True,
                   "titleColumn": title, "textColumn": text, "tagsColumn": tags},
    }


def dashboard(uid, title, description, panels, variables=(), annotations=(), time_from="now-6h"):
    """Lays the panels out two to a row (a panel with "full": True takes the whole width)."""
    x = y = 0
    for i, panel in enumerate(panels, start=1):
        width = 24 if panel.pop("full", False) else 12
        if x + width > 24:
            x, y = 0, y + 9
        panel.update(id=i, datasource=DS, gridPos={"x": x, "y": y, "w": width, "h": 9})
        x += width
        if x >= 24:
            x, y = 0, y + 9
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
               "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
               "name": "Annotations & Alerts", "type": "dashboard"}
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["vantage"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": time_from, "to": "now"},
        "refresh": "1m",
        "timezone": "browser",
        "templating": {"list": list(variables)},
        "annotations": {"list": [builtin, *annotations]},
        "links": [{"type": "dashboards", "tags": ["vantage"], "asDropdown": True,
                   "title": "vantage", "includeVars": False, "keepTime": True}],
        "panels": panels,
    }


def fleet():
    where = '"site" =~ /^$site$/ AND $timeFilter'
    matrix = [{"id": "groupingToMatrix", "options": {
        "columnField": "target_site", "rowField": "site", "valueField": None, "emptyValue": "null"}}]

    def site_matrix(title, select, field, unit, steps, description):
        grouping = [{**matrix[0], "options": {**matrix[0]["options"], "valueField": field}}]
        return table(title, [target("A", f'SELECT {select} AS "{field}" FROM "ping" WHERE {where} '
                                         'GROUP BY "site", "target_site"', "table")],
                     description, unit, steps, grouping, timeFrom="5m")

    return dashboard(
        "vantage-fleet", "vantage / Fleet overview",
        "Is anything broken right now, and where? Site-to-site loss and latency, the worst "
        "targets, open incidents, and agents that went quiet.",
        [
            site_matrix("Loss now: agent site (rows) → target site (columns)", 'mean("loss_pct")',
                        "loss_pct", "percent", LOSS_STEPS,
                        "Mean ping loss over the last 5 minutes, per agent site and target site."),
            site_matrix("Median RTT now: agent site (rows) → target site (columns)",
                        'median("rtt_median_ms")', "rtt_median_ms", "ms",
                        [(None, "green"), (50, "yellow"), (150, "orange"), (300, "red")],
                        "Median of the rounds' median RTT over the last 5 minutes."),
            table("Worst targets (by loss)", [target("A", f'''SELECT mean("loss_pct") AS "loss_pct",
                      median("rtt_median_ms") AS "rtt_median_ms", max("rtt_p90_ms") AS "rtt_p90_ms"
                      FROM "ping" WHERE {where} GROUP BY "agent", "target", "target_site"''', "table")],
                  "Every (agent, target) pair over the dashboard's time range, most loss first.",
                  transformations=[sort_by("loss_pct", True),
                                   {"id": "limit", "options": {"limitField": 15}}],
                  overrides=[override("loss_pct", unit="percent", thresholds=thresholds(LOSS_STEPS),
                                      custom__cellOptions={"type": "color-background"}),
                             override("rtt_median_ms", unit="ms"), override("rtt_p90_ms", unit="ms")]),
            table("Open incidents", [target("A", f'''SELECT "id", "state", "severity", "rule", "scope",
                      "subject", "title", "affected", "total_targets", "event" FROM "incident"
                      WHERE {where}''', "table")],
                  "Incidents whose latest event (in the last 24 h; an open incident sends a status "
                  "update every 30 minutes) is not `resolved`. The draft is "
                  "`vantage incidents show ID` on the agent.",
                  transformations=[
                      {"id": "groupBy", "options": {"fields": {
                          "id": {"operation": "groupby", "aggregations": []},
                          **{f: {"operation": "aggregate", "aggregations": ["last"]} for f in
                             ["Time", "state", "severity", "rule", "scope", "subject", "title",
                              "affected", "total_targets", "event"]}}}},
                      {"id": "filterByValue", "options": {"type": "include", "match": "all",
                       "filters": [{"fieldName": "state (last)",
                                    "config": {"id": "equal", "options": {"value": "open"}}}]}},
                      sort_by("Time (last)", True),
                  ],
                  overrides=[override("Time (last)", displayName="Last event",
                                      unit="dateTimeFromNow")],
                  timeFrom="24h"),
            table("Agents by last report (quiet ones first)", [target("A", '''SELECT
                      last("observations") AS "observations" FROM "agent"
                      WHERE "site" =~ /^$site$/ AND $timeFilter GROUP BY "agent", "site"''', "table")],
                  "When each agent last wrote its self-metrics (every 10 s while it runs). An agent "
                  "that stopped reporting sits on top, its last report minutes or hours ago.",
                  transformations=[sort_by("Time", False)],
                  overrides=[override("Time", displayName="Last report", unit="dateTimeFromNow")],
                  timeFrom="24h"),
            timeseries("Loss by site pair", [target("A", f'''SELECT mean("loss_pct") AS "loss_pct"
                      FROM "ping" WHERE {where} GROUP BY time($__interval), "site", "target_site"
                      fill(null)''', alias="$tag_site → $tag_target_site")],
                       "percent", "Mean ping loss per agent site → target site."),
        ],
        [variable("site", "Agent site", 'SHOW TAG VALUES FROM "ping" WITH KEY = "site"')],
    )


def who_sees_it():
    match = '"target" =~ /^$target$/ AND "site" =~ /^$site$/ AND $timeFilter'
    by_site = 'GROUP BY time($__interval), "site" fill(null)'
    per_target = dict(repeat="target", repeatDirection="v", maxPerRow=1)
    return dashboard(
        "vantage-who-sees-it", "vantage / Who sees it",
        "Is it us or them? Per target, loss and median RTT from every source site over time, "
        "and the incidents of the outage (the fleet's, keyed by fleet_key, and each agent's).",
        [
            timeseries("Loss to $target, per source site", [target("A", f'''SELECT
                       mean("loss_pct") AS "loss_pct" FROM "ping" WHERE {match} {by_site}''',
                       alias="$tag_site")], "percent",
                       "Mean ping loss from each agent site: one line high = that site's side; "
                       "every line high = the target or its provider.",
                       **per_target),
            timeseries("Median RTT to $target, per source site", [target("A", f'''SELECT
                       median("rtt_median_ms") AS "rtt_median_ms" FROM "ping" WHERE {match}
                       {by_site}''', alias="$tag_site")], "ms",
                       "Median of the rounds' median RTT from each agent site.", **per_target),
        ],
        [
            variable("target", "Target", 'SHOW TAG VALUES FROM "ping" WITH KEY = "target"'),
            variable("site", "Source site", 'SHOW TAG VALUES FROM "ping" WITH KEY = "site"'),
        ],
        [annotation("Incidents of the outage", "red", '''SELECT "title", "summary", "agent",
                    "event", "severity" FROM "incident"
                    WHERE "fleet_key" =~ /^(target\/$target|site\/.+)$/ AND $timeFilter''',
                    "title", "summary", "agent,event,severity")],
    )


def latency():
    match = '"agent" =~ /^$agent$/ AND "target" =~ /^$target$/ AND $timeFilter'
    smoke = target("A", f'''SELECT median("rtt_median_ms") AS "median", median("rtt_p10_ms") AS "p10",
        median("rtt_p25_ms") AS "p25", median("rtt_p75_ms") AS "p75", median("rtt_p90_ms") AS "p90"
        FROM "ping" WHERE {match} GROUP BY time($__interval) fill(null)''', alias="$col")
    loss = target("B", f'''SELECT mean("loss_pct") AS "loss" FROM "ping" WHERE {match}
        GROUP BY time($__interval) fill(null)''', alias="$col")
    band = {"custom.fillOpacity": 25, "custom.lineWidth": 0}

    def smoke_override(name, fill_to, opacity):
        props = [{"id": "custom.fillBelowTo", "value": fill_to}, {"id": "color", "value":
                 {"mode": "fixed", "fixedColor": "#7f7f7f"}}]
        props += [{"id": k, "value": v} for k, v in {**band, "custom.fillOpacity": opacity}.items()]
        return {"matcher": {"id": "byName", "options": name}, "properties": props}

    quiet = [{"id": "custom.lineWidth", "value": 0}, {"id": "custom.hideFrom",
              "value": {"legend": True, "tooltip": False, "viz": False}}]
    panel = timeseries(
        "$target from $agent", [smoke, loss], "ms",
        "Smokeping-style: the median RTT line over the p10–p90 (light) and p25–p75 (dark) smoke; "
        "loss is the coloured bars on the right axis (green none, yellow ≥1%, orange ≥5%, red ≥20%).",
        overrides=[
            smoke_override("p90", "p10", 15), smoke_override("p75", "p25", 35),
            {"matcher": {"id": "byName", "options": "p10"}, "properties": quiet},
            {"matcher": {"id": "byName", "options": "p25"}, "properties": quiet},
            override("median", color={"mode": "fixed", "fixedColor": "blue"}, custom__lineWidth=2),
            override("loss", unit="percent", min=0, max=100, thresholds=thresholds(LOSS_STEPS),
                     color={"mode": "thresholds"}, custom__drawStyle="bars",
                     custom__fillOpacity=80, custom__axisPlacement="right",
                     custom__gradientMode="scheme"),
        ],
        repeat="target", repeatDirection="h", full=True, maxPerRow=2,
    )
    return dashboard(
        "vantage-latency", "vantage / Latency (smokeping)",
        "How has the path from one agent to each target behaved: its latency distribution, "
        "loss, and the incidents it raised.",
        [panel],
        [
            variable("site", "Agent site", 'SHOW TAG VALUES FROM "ping" WITH KEY = "site"'),
            variable("agent", "Agent", 'SHOW TAG VALUES FROM "ping" WITH KEY = "agent" '
                     'WHERE "site" =~ /^$site$/', multi=False),
            variable("target", "Target", 'SHOW TAG VALUES FROM "ping" WITH KEY = "target" '
                     'WHERE "agent" =~ /^$agent$/'),
        ],
        [annotation("Incidents", "red", '''SELECT "title", "summary", "event", "severity"
                    FROM "incident" WHERE "agent" =~ /^$agent$/ AND $timeFilter''',
                    "title", "summary", "event,severity")],
    )


def path():
    match = '"agent" =~ /^$agent$/ AND "target" =~ /^$target$/ AND $timeFilter'
    per_hop = 'GROUP BY time($__interval), "target", "hop" fill(null)'
    return dashboard(
        "vantage-path", "vantage / Path",
        "Where on the path does it go wrong? Loss and RTT per hop over time (mtr over time), the "
        "latest hops, and path changes as annotations.",
        [
            timeseries("Loss per hop", [target("A", f'''SELECT mean("loss_pct") AS "loss_pct"
                       FROM "trace_hop" WHERE {match} {per_hop}''',
                       alias="$tag_target hop $tag_hop")], "percent",
                       "Loss at an intermediate hop alone is often ICMP rate limiting; loss that "
                       "continues to the last hop is loss on the path.", full=True),
            timeseries("RTT per hop (avg)", [target("A", f'''SELECT mean("rtt_avg_ms") AS "rtt_avg_ms"
                       FROM "trace_hop" WHERE {match} {per_hop}''',
                       alias="$tag_target hop $tag_hop")], "ms", full=True),
            table("Latest hops", [target("A", f'''SELECT last("address") AS "address",
                      last("loss_pct") AS "loss_pct", last("rtt_best_ms") AS "rtt_best_ms",
                      last("rtt_avg_ms") AS "rtt_avg_ms", last("rtt_worst_ms") AS "rtt_worst_ms"
                      FROM "trace_hop" WHERE {match} GROUP BY "agent", "target", "hop"''', "table")],
                  "Each hop's latest trace, like `mtr --report`.",
                  overrides=[override("loss_pct", unit="percent"), override("rtt_best_ms", unit="ms"),
                             override("rtt_avg_ms", unit="ms"), override("rtt_worst_ms", unit="ms")]),
            timeseries("Hops to the target", [target("A", f'''SELECT last("hops") AS "hops"
                       FROM "trace" WHERE {match} GROUP BY time($__interval), "target" fill(null)''',
                       alias="$tag_target")], "none",
                       "A step is a changed path length; path changes are also annotations."),
        ],
        [
            variable("agent", "Agent", 'SHOW TAG VALUES FROM "trace" WITH KEY = "agent"'),
            variable("target", "Target", 'SHOW TAG VALUES FROM "trace" WITH KEY = "target" '
                     'WHERE "agent" =~ /^$agent$/'),
        ],
        [annotation("Path changes", "orange", f'''SELECT "path_hash", "hops", "target"
                    FROM "trace" WHERE "path_changed" = true AND {match}''',
                    "target", "path_hash", "target")],
    )


def services():
    # `target` lists HTTP targets (the phases panel repeats over them); DNS and TCP panels show
    # every target of the chosen agents, their servers being other hosts than the web ones.
    by_agent = '"agent" =~ /^$agent$/ AND $timeFilter'
    match = f'"target" =~ /^$target$/ AND "probe" =~ /^$probe$/ AND {by_agent}'
    phases = ", ".join(f'mean("{p}_ms") AS "{p}"' for p in
                       ["resolve", "connect", "tls", "processing", "transfer"])
    by_probe = 'GROUP BY time($__interval), "probe", "target" fill(null)'
    status = timeseries("HTTP status codes", [target("A", f'''SELECT last("status_code")
                        AS "status_code" FROM "http" WHERE {match} {by_probe}''',
                        alias="$tag_probe $tag_target")], "none",
                        "The status code of each check over time: green 2xx, blue 3xx, orange 4xx, "
                        "red 5xx; a gap is a check that got no response.")
    status.update(type="state-timeline", options={"showValue": "auto", "mergeValues": True,
                                                  "rowHeight": 0.8, "legend": {"showLegend": False}})
    status["fieldConfig"]["defaults"].update(
        color={"mode": "thresholds"},
        thresholds=thresholds([(None, "purple"), (200, "green"), (300, "blue"), (400, "orange"),
                               (500, "red")]))
    return dashboard(
        "vantage-services", "vantage / Service checks",
        "Is a service slow or failing, and in which phase? HTTP phases, status codes and "
        "certificates; DNS latency and answers; TCP connect times.",
        [
            timeseries("HTTP phases: $target", [target("A", f'''SELECT {phases} FROM "http"
                       WHERE {match} GROUP BY time($__interval) fill(null)''', alias="$col")], "ms",
                       "Resolve, connect, TLS, processing (to the first byte), transfer: stacked, the "
                       "top is the total. Several HTTP checks of one target stack together: pick one "
                       "with the HTTP check variable.", stack=True, repeat="target",
                       repeatDirection="h", maxPerRow=2),
            status,
            table("HTTP: latest result and certificate expiry", [target("A", f'''SELECT
                      last("status_code") AS "status_code", last("total_ms") AS "total_ms",
                      last("cert_expiry_days") AS "cert_expiry_days", last("failure") AS "failure"
                      FROM "http" WHERE {match} GROUP BY "probe", "target"''', "table")],
                  "Days until the earliest-expiring certificate of the chain (HTTPS checks).",
                  overrides=[override("cert_expiry_days", unit="d", thresholds=thresholds(
                      [(None, "red"), (7, "orange"), (21, "green")]),
                      custom__cellOptions={"type": "color-background"}),
                      override("total_ms", unit="ms")]),
            timeseries("HTTP failures", [target("A", f'''SELECT count("failure") AS "failures"
                       FROM "http" WHERE {match} {by_probe}''', alias="$tag_probe $tag_target")],
                       "none", "Failed checks per interval (the reason: see the table)."),
            timeseries("DNS latency", [target("A", f'''SELECT mean("latency_ms") AS "latency_ms"
                       FROM "dns" WHERE {by_agent} GROUP BY time($__interval), "probe", "target",
                       "server", "record_type" fill(null)''',
                       alias="$tag_probe $tag_server $tag_record_type")], "ms"),
            table("DNS: latest answer", [target("A", f'''SELECT last("rcode") AS "rcode",
                      last("latency_ms") AS "latency_ms", last("answers") AS "answers",
                      last("failure") AS "failure" FROM "dns" WHERE {by_agent}
                      GROUP BY "probe", "target", "server", "record_type"''', "table")],
                  "The rcode; NXDOMAIN, SERVFAIL and silence are failures.",
                  overrides=[override("latency_ms", unit="ms")]),
            timeseries("DNS failures", [target("A", f'''SELECT count("failure") AS "failures"
                       FROM "dns" WHERE {by_agent} {by_probe}''', alias="$tag_probe $tag_target")],
                       "none"),
            timeseries("TCP connect", [target("A", f'''SELECT mean("connect_ms") AS "connect_ms"
                       FROM "tcp" WHERE {by_agent} {by_probe}''', alias="$tag_probe $tag_target")],
                       "ms", "Handshake time; failures (refused, unreachable, timeout) leave gaps "
                       "and show in the table."),
            table("TCP: latest result", [target("A", f'''SELECT last("success") AS "success",
                      last("connect_ms") AS "connect_ms", last("failure") AS "failure"
                      FROM "tcp" WHERE {by_agent} GROUP BY "probe", "target"''', "table")],
                  overrides=[override("connect_ms", unit="ms")]),
        ],
        [
            variable("agent", "Agent", 'SHOW TAG VALUES FROM "http", "dns", "tcp" WITH KEY = "agent"'),
            variable("target", "HTTP target", 'SHOW TAG VALUES FROM "http" WITH KEY = "target" '
                     'WHERE "agent" =~ /^$agent$/'),
            variable("probe", "HTTP check", 'SHOW TAG VALUES FROM "http" WITH KEY = "probe" '
                     'WHERE "agent" =~ /^$agent$/ AND "target" =~ /^$target$/'),
        ],
    )


def agent_health():
    match = '"agent" =~ /^$agent$/ AND $timeFilter'
    by_output = 'GROUP BY time($__interval), "agent", "output" fill(null)'
    alias = "$tag_agent → $tag_output"
    return dashboard(
        "vantage-agent", "vantage / Agent health",
        "Is the agent itself healthy and are its results arriving? Spool depth, delivery lag, "
        "drops and probe lag, from the agent's self-metrics (every 10 s per output).",
        [
            timeseries("Spool depth (points waiting)", [target("A", f'''SELECT last("spool_points")
                       AS "spool_points" FROM "agent" WHERE {match} {by_output}''', alias=alias)],
                       "none", "Grows while an output is unreachable; drains at full batches after."),
            timeseries("Delivery lag (oldest undelivered point)", [target("A", f'''SELECT
                       max("oldest_undelivered_age_s") AS "oldest_undelivered_age_s" FROM "agent"
                       WHERE {match} {by_output}''', alias=alias)], "s",
                       "Absent while nothing waits. Note: points written during an outage arrive "
                       "after it, so this panel shows an outage once it is over."),
            timeseries("Delivered points per interval", [target("A", f'''SELECT
                       non_negative_difference(last("delivered_points")) AS "delivered"
                       FROM "agent" WHERE {match} {by_output}''', alias=alias)], "none"),
            timeseries("Dropped and dead-letter points (since the spool was created)", [
                target("A", f'''SELECT last("dropped_points") AS "dropped_points",
                       last("dead_letter_points") AS "dead_letter_points" FROM "agent"
                       WHERE {match} {by_output}''', alias=f"{alias} $col")], "none",
                       "Any rise is data lost (dropped: spool full or disk refusing writes) or "
                       "refused by the server (dead letters: `vantage report` shows why)."),
            timeseries("Probe lag (worst, recently)", [target("A", f'''SELECT max("probe_lag_ms")
                       AS "probe_lag_ms" FROM "agent" WHERE {match}
                       GROUP BY time($__interval), "agent" fill(null)''', alias="$tag_agent")], "ms",
                       "How late probe runs start against their schedule: an overloaded agent."),
            timeseries("Observations per interval", [target("A", f'''SELECT
                       non_negative_difference(max("observations")) AS "observations" FROM "agent"
                       WHERE {match} GROUP BY time($__interval), "agent" fill(null)''',
                       alias="$tag_agent")], "none"),
            timeseries("Spool size", [target("A", f'''SELECT last("spool_bytes") AS "spool_bytes"
                       FROM "agent" WHERE {match} {by_output}''', alias=alias)], "bytes"),
        ],
        [variable("agent", "Agent", 'SHOW TAG VALUES FROM "agent" WITH KEY = "agent"')],
    )


def main():
    check = sys.argv[1:] == ["--check"]
    OUT.mkdir(exist_ok=True)
    stale = []
    for name, build in [("fleet", fleet), ("who-sees-it", who_sees_it), ("latency", latency),
                        ("path", path),
                        ("services", services), ("agent", agent_health)]:
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        file = OUT / f"{name}.json"
        if not check:
            file.write_text(text)
        elif not file.exists() or file.read_text() != text:
            stale.append(str(file))
    if stale:
        sys.exit("not what generate.py writes (run python3 dashboards/generate.py): "
                 + ", ".join(stale))


if __name__ == "__main__":
    main()
