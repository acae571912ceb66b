#!/usr/bin/env python3
"""Counts the series and bytes of one scrape of URL in Prometheus' text format and in its protobuf format (a native
histogram is one series). Prints: text_series text_bytes protobuf_series protobuf_bytes.

usage: scripts/scrape-series.py http://127.0.0.1:9337/metrics
"""
import sys
import urllib.request

PROTOBUF = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"


def fetch(url, accept):
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read(), response.headers.get("Content-Type", "")


def varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def metrics_in_family(message):
    """The Metric fields (4) of one MetricFamily message; a classic histogram counts its buckets, sum and count."""
    at, count, kind, metrics = 0, 0, 0, []
    while at < len(message):
        key, at = varint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(message, at)
            if field == 3:
                kind = value
        elif wire == 2:
            length, at = varint(message, at)
            if field == 4:
                metrics.append(message[at:at + length])
            at += length
        elif wire == 1:
            at += 8
        else:
            raise ValueError(f"wire type {wire}")
    for metric in metrics:
        if kind != 4:
            count += 1
            continue
        # A histogram: native (spans, field 12, or schema 5) is one series; classic is its buckets + sum + count.
        histogram = histogram_of(metric)
        count += 1 if histogram["native"] else histogram["buckets"] + 3
    return count


def histogram_of(metric):
    at, result = 0, {"native": False, "buckets": 0}
    while at < len(metric):
        key, at = varint(metric, at)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, at = varint(metric, at)
            if field == 7:
                inner, j = metric[at:at + length], 0
                while j < len(inner):
                    k, j = varint(inner, j)
                    f, w = k >> 3, k & 7
                    if w == 0:
                        _, j = varint(inner, j)
                        if f == 5:
                            result["native"] = True
                    elif w == 1:
                        j += 8
                    elif w == 2:
                        n, j = varint(inner, j)
                        if f == 3:
                            result["buckets"] += 1
                        if f == 12:
                            result["native"] = True
                        j += n
            at += length
        elif wire == 0:
            _, at = varint(metric, at)
        elif wire == 1:
            at += 8
    return result


def main():
    url = sys.argv[1]
    text, _ = fetch(url, "text/plain;version=0.0.4")
    text_series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
    body, content_type = fetch(url, PROTOBUF)
    series = 0
    if "protobuf" in content_type:
        at = 0
        while at < len(body):
            length, at = varint(body, at)
            series += metrics_in_family(body[at:at + length])
            at += length
    else:
        series = -1
    print(text_series, len(text), series, len(body))


if __name__ == "__main__":
    main()
