#!/usr/bin/env bash
# The README's first command. The archiver, backups and restore are not built
# yet, so for now this shows what the foundation does: it writes, lists, reads
# back (checksum verified) and deletes an object in a throwaway file
# repository with `walship check`, then shows that a malformed repository URL
# is refused with exit code 2.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(mktemp -d)
trap 'rm -rf "$repo"' EXIT
echo "== walship check --repo file://$repo/repo"
./bin/walship --repo "file://$repo/repo" check
echo
echo "== walship --repo s3://Not_A_Bucket check   (a malformed URL: exit 2 expected)"
set +e
./bin/walship --repo "s3://Not_A_Bucket" check
rc=$?
set -e
echo "exit code $rc"
[[ $rc -eq 2 ]]
