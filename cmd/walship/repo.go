package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"strings"

	"filippo.io/age"
	"github.com/urfave/cli/v2"

	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// maxIdentityFile bounds --age-identity-file: a few lines of 74 bytes.
const maxIdentityFile = 1 << 20

// repoFlags are the flags of every command that writes or reads repository
// objects: how objects are written (compression, encryption) and the
// identities that decrypt them. Key material never appears in output.
func repoFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name: "compression", EnvVars: []string{"WALSHIP_COMPRESSION"}, Value: "zstd",
			Usage: "compression of the objects written: zstd or none (objects record theirs, so either reads any)",
		},
		&cli.StringSliceFlag{
			Name: "age-recipient", EnvVars: []string{"WALSHIP_AGE_RECIPIENTS"},
			Usage: "encrypt the objects written to the age X25519 public `KEY` (age1..., as age-keygen -y prints); repeat it, or list keys with commas in the variable",
		},
		&cli.StringFlag{
			Name: "age-identity-file", EnvVars: []string{"WALSHIP_AGE_IDENTITY_FILE"}, TakesFile: true,
			Usage: "`FILE` of age identities (AGE-SECRET-KEY-1..., as age-keygen writes) that decrypt the objects of an encrypted repository",
		},
	}
}

// openCatalog opens the repository that --repo names, with the codec and
// identities that repoFlags set. Bad flags are usage errors.
func openCatalog(c *cli.Context) (*catalog.Repo, error) {
	comp, err := codec.ParseCompression(c.String("compression"))
	if err != nil {
		return nil, usagef("--compression %q: want zstd or none", c.String("compression"))
	}
	var recipients []age.Recipient
	for _, s := range c.StringSlice("age-recipient") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, usagef("--age-recipient %q is not an age X25519 public key: want age1... as age-keygen -y prints it", s)
		}
		recipients = append(recipients, r)
	}
	var identities []age.Identity
	if path := c.String("age-identity-file"); path != "" {
		if identities, err = readIdentities(path); err != nil {
			return nil, err
		}
	}
	s, _, err := openRepo(c)
	if err != nil {
		return nil, err
	}
	return catalog.New(s, catalog.Options{
		Codec:      codec.Options{Compression: comp, Recipients: recipients},
		Identities: identities,
	}), nil
}

// readIdentities reads an age identity file. Its errors name the file and
// the line, never what the line holds.
func readIdentities(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("--age-identity-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIdentityFile+1))
	if err != nil {
		return nil, usagef("--age-identity-file: read %s: %w", path, err)
	}
	if len(b) > maxIdentityFile {
		return nil, usagef("--age-identity-file %s: larger than %d bytes; it is not an age identity file", path, maxIdentityFile)
	}
	var ids []age.Identity
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxIdentityFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		got, err := age.ParseIdentities(strings.NewReader(line))
		if err != nil {
			return nil, usagef("--age-identity-file %s: line %d is not an age identity (want AGE-SECRET-KEY-1..., as age-keygen writes; the line is not shown)", path, n)
		}
		ids = append(ids, got...)
	}
	if err := sc.Err(); err != nil {
		return nil, usagef("--age-identity-file %s: %w", path, err)
	}
	if len(ids) == 0 {
		return nil, usagef("--age-identity-file %s: no identity in it; want AGE-SECRET-KEY-1... lines, as age-keygen writes", path)
	}
	return ids, nil
}
