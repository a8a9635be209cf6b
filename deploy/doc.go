// Package deploy holds walship's deployment artefacts (container image,
// compose file, Kubernetes manifests, systemd units, an AWS example with its
// IAM policies) and no code: its tests check that the artefacts are real.
// They parse every YAML, JSON and unit file strictly, run the Dockerfile's
// build steps outside Docker and check the binary is static, check every
// walship command, flag and WALSHIP_* variable against the help of that very
// binary, and run walship's lease and retention code against a store that
// enforces the IAM policies.
package deploy
