#!/usr/bin/env bash
# Builds the MinIO server the tests run against into the cache outside the
# clone (about 4 minutes on 2 cores, once per machine). A missing or broken
# cache is rebuilt. MinIO is never a requirement in go.mod.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
cache=${WALSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/walship}
dir=$cache/minio
marker=$dir/installed-$MINIO_VERSION

if [[ -f $marker && -x $dir/bin/minio ]]; then
  echo "minio: $dir/bin/minio (cached)"
  exit 0
fi
echo "minio: building github.com/minio/minio@$MINIO_VERSION into $dir/bin (takes a few minutes once)"
rm -rf "$dir"
mkdir -p "$dir/bin"
# Outside the module, so that MinIO's requirements never touch our go.mod.
(cd "$dir" && GOBIN=$dir/bin go install "github.com/minio/minio@$MINIO_VERSION")
"$dir/bin/minio" --version >/dev/null
touch "$marker"
echo "minio: $dir/bin/minio"
