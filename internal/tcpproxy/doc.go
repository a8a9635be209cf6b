// Package tcpproxy forwards TCP connections to one address (a PostgreSQL
// server in the tests) and breaks them on demand: Drop resets every open
// connection at once, Stall stops moving bytes on every connection, open or
// new, until Resume, as a network partition would without closing anything;
// Freeze stops the open ones for good while new ones work, as a path that
// died without a reset; and Refuse resets new connections as they arrive.
// Only tests import it.
package tcpproxy
