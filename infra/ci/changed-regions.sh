#!/bin/sh
# Print the regions (one a line) whose node pool changed between two commits:
# infra/node-pool/<region>.tfvars or infra/node-pool/<region>/**; a change under
# modules/ or infra/cloud-init/ touches every region. The same rule as XPlane's
# local runner (xplane/infra/changes.py).
#
#   changed-regions.sh BASE_SHA HEAD_SHA
set -eu
base=$1
head=$2

all_regions() {
  git ls-tree -r --name-only "$1" -- infra/node-pool |
    sed -n 's#^infra/node-pool/\([^/]*\)/main\.tf$#\1#p' | grep -vx modules || true
}

if [ -z "$base" ] || ! git cat-file -e "$base^{commit}" 2>/dev/null; then
  changed=$(git ls-tree -r --name-only "$head" -- infra)
else
  changed=$(git diff --name-only --no-renames "$base" "$head" -- infra)
fi

{
  if printf '%s\n' "$changed" | grep -q -e '^infra/node-pool/modules/' -e '^infra/cloud-init/'; then
    all_regions "$head"
  fi
  printf '%s\n' "$changed" | sed -n \
    -e 's#^infra/node-pool/\([^/]*\)\.tfvars$#\1#p' \
    -e 's#^infra/node-pool/\([^/]*\)/.*#\1#p' | grep -vx modules || true
} | sort -u
