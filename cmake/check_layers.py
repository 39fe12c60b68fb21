#!/usr/bin/env python3
"""Fails the build when a source file includes a folder its layer may not depend on.

The layers (docs/architecture.md, "Layers"), each allowed only the ones listed:
  common                      nothing but itself
  net, http                   common (http also net)
  config, ratelimit, metrics  common, net, http
  gateway (the worker)        common, net, http, config, ratelimit, metrics
  relay (the WebSocket relay)  common, net, http
  control (the control plane) common, net, http, config, ratelimit, metrics, relay
  app                         everything
so the worker never includes the control plane, nor the control plane the worker, and nothing
below app includes app. Run by the build (the `check_layers` target) on every build.

usage: check_layers.py SRC_DIR
"""
import os
import re
import sys

BASE = {"common"}
ALLOWED = {
    "common": BASE,
    "net": BASE | {"net"},
    "http": BASE | {"net", "http"},
    "config": BASE | {"net", "http", "config"},
    "ratelimit": BASE | {"net", "http", "ratelimit"},
    "metrics": BASE | {"net", "http", "metrics"},
    "gateway": BASE | {"net", "http", "config", "ratelimit", "metrics", "gateway"},
    "relay": BASE | {"net", "http", "relay"},
    "control": BASE | {"net", "http", "config", "ratelimit", "metrics", "relay", "control"},
    "app": None,  # the top: may include anything
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/')


def main():
    src = sys.argv[1]
    problems = []
    for layer in sorted(os.listdir(src)):
        root = os.path.join(src, layer)
        if not os.path.isdir(root):
            continue
        if layer not in ALLOWED:
            problems.append("%s/: a folder with no layer in cmake/check_layers.py" % layer)
            continue
        allowed = ALLOWED[layer]
        for dirpath, _, files in os.walk(root):
            for name in sorted(files):
                if not name.endswith((".hpp", ".cpp", ".h")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if m and allowed is not None and m.group(1) not in allowed:
                            problems.append("%s:%d: %s/ may not include %s/ (allowed: %s)" % (
                                os.path.relpath(path, os.path.dirname(src)), lineno, layer, m.group(1),
                                ", ".join(sorted(allowed))))
    for p in problems:
        print("layering: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
