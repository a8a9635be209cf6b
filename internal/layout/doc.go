// Package layout checks, as a test, that imports between walship's packages
// follow the directions DESIGN.md allows; it has no code of its own.
package layout
