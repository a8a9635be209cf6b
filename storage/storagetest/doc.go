// Package storagetest is the conformance suite that every storage.Store
// backend must pass, failure cases included; only tests import it.
package storagetest
