#!/usr/bin/env bash
# Refreshes the console's vendored chart library (uPlot) from the npm registry.
# Run by hand when upgrading; the result is committed, so nothing fetches assets at
# build or run time and no Node is needed to run XPlane.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.6.32}"
dest=xplane/api/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@${version}" >/dev/null && tar xzf uplot-*.tgz)
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$dest/"
cp "$work/package/LICENSE" "$dest/uPlot.LICENSE"
echo "vendored uPlot ${version} into ${dest}"
