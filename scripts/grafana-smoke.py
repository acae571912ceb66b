#!/usr/bin/env python3
"""Writes contrib/grafana/udpecho-smoke.json: smokeping's smoke in Grafana, for a mesh peer and for an exporter's
continuous target. Each quantile's query reads native histograms where Prometheus keeps them and the classic buckets
otherwise (`A or B`), so one dashboard serves both; the tests run every query against both kinds of Prometheus.

usage: scripts/grafana-smoke.py
"""
import json
import os


def quantile(metric, selector, q):
    return (f"histogram_quantile({q}, sum(rate({metric}{{{selector}}}[$__rate_interval]))) or "
            f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))")


def smoke_panel(pid, title, metric, selector, y):
    quantiles = [("p5", 0.05), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95)]
    targets = [{"refId": chr(65 + i), "expr": quantile(metric, selector, v), "legendFormat": name}
               for i, (name, v) in enumerate(quantiles)]

    def band(name, colour, fill_to):
        return {"matcher": {"id": "byName", "options": name},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}},
                               {"id": "custom.fillBelowTo", "value": fill_to},
                               {"id": "custom.lineWidth", "value": 0},
                               {"id": "custom.fillOpacity", "value": 60}]}

    def edge(name):
        return {"matcher": {"id": "byName", "options": name},
                "properties": [{"id": "custom.lineWidth", "value": 0},
                               {"id": "color", "value": {"mode": "fixed", "fixedColor": "#cfcfcf"}}]}

    return {
        "id": pid, "type": "timeseries", "title": title,
        "description": "smokeping's smoke: the median as a line, p25-p75 dark grey, p5-p95 light grey. From native "
                       "histograms where Prometheus keeps them, else from the classic buckets.",
        "gridPos": {"h": 10, "w": 24, "x": 0, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": "s",
                         "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 0, "showPoints": "never"}},
            "overrides": [band("p95", "#e3e3e3", "p5"), edge("p5"), band("p75", "#b0b0b0", "p25"), edge("p25"),
                          {"matcher": {"id": "byName", "options": "median"},
                           "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "#1a9641"}},
                                          {"id": "custom.lineWidth", "value": 3}]}],
        },
        "options": {"legend": {"showLegend": True, "displayMode": "list"}, "tooltip": {"mode": "multi"}},
    }


def loss_panel(pid, title, lost, sent, selector, y):
    return {
        "id": pid, "type": "timeseries", "title": title,
        "description": "The share of probes lost, coloured as the smoke graphs colour their median: green none, blue "
                       "up to 2 %, purple 10 %, orange 50 %, red more.",
        "gridPos": {"h": 6, "w": 24, "x": 0, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": "A", "legendFormat": "loss",
                     "expr": f"sum(rate({lost}{{{selector}}}[$__rate_interval])) / "
                             f"sum(rate({sent}{{{selector}}}[$__rate_interval]))"}],
        "fieldConfig": {"defaults": {
            "unit": "percentunit", "min": 0, "max": 1, "color": {"mode": "thresholds"},
            "custom": {"drawStyle": "line", "lineWidth": 3, "gradientMode": "scheme", "showPoints": "never"},
            "thresholds": {"mode": "absolute", "steps": [
                {"color": "#1a9641", "value": None}, {"color": "#2b83ba", "value": 0.000001},
                {"color": "#7b3294", "value": 0.02}, {"color": "#e66101", "value": 0.10},
                {"color": "#d7191c", "value": 0.50}]}},
            "overrides": []},
        "options": {"legend": {"showLegend": False}},
    }


def variable(name, label, query):
    return {"name": name, "type": "query", "label": label,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "refresh": 2}


def main():
    mesh = 'peer="$peer",instance=~"$agent"'
    target = 'target="$target"'
    agent = variable("agent", "agent", "label_values(udpecho_mesh_peers, instance)")
    agent.update({"includeAll": True, "allValue": ".*"})
    dashboard = {
        "title": "udpecho smoke",
        "uid": "udpecho-smoke",
        "description": "Round trips over time as smokeping draws them, for a mesh peer (udpecho mesh) or an "
                       "exporter's continuous target (udpecho exporter), from native or classic histograms.",
        "tags": ["udpecho", "latency", "smokeping"],
        "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "1m",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            agent,
            variable("peer", "peer", "label_values(udpecho_mesh_probes_sent_total, peer)"),
            variable("target", "exporter target", "label_values(udpecho_target_packets_sent_total, target)"),
        ]},
        "panels": [
            smoke_panel(1, "Mesh: round trip to $peer", "udpecho_mesh_rtt_seconds", mesh, 0),
            loss_panel(2, "Mesh: loss to $peer", "udpecho_mesh_probes_lost_total", "udpecho_mesh_probes_sent_total",
                       mesh, 10),
            smoke_panel(3, "Exporter: round trip to $target", "udpecho_target_rtt_seconds", target, 16),
            loss_panel(4, "Exporter: loss to $target", "udpecho_target_packets_lost_total",
                       "udpecho_target_packets_sent_total", target, 26),
        ],
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "contrib", "grafana", "udpecho-smoke.json")
    with open(path, "w") as f:
        json.dump(dashboard, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
