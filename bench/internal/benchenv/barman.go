package benchenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
)

// Barman runs Debian's barman-cli-cloud (boto3) against a MinIO server
// over HTTPS; boto3 trusts the server through AWS_CA_BUNDLE (MinIO.Env).
type Barman struct {
	URL         string // s3://bucket/prefix
	Server      string // barman's server name, the last part of the prefix
	Endpoint    string // https://host:port
	Compression string // gzip, bzip2, snappy or "" (none)
}

// EnsureBarman installs barman-cli-cloud, python3-boto3 and, for snappy,
// python3-snappy, when missing.
func EnsureBarman(ctx context.Context, compression string) error {
	if err := EnsurePackages(ctx, "barman-cloud-backup", "barman-cli-cloud", "python3-boto3"); err != nil {
		return err
	}
	if compression == "snappy" && exec.CommandContext(ctx, "/usr/bin/python3", "-c", "import snappy").Run() != nil {
		fmt.Println("installing python3-snappy (apt-get install -y python3-snappy)")
		if err := Sh(ctx, "apt-get", "install", "-y", "python3-snappy"); err != nil {
			return fmt.Errorf("apt-get install python3-snappy: %w", err)
		}
	}
	return nil
}

// compressionFlag is the option that selects b.Compression.
func (b Barman) compressionFlag() []string {
	switch b.Compression {
	case "":
		return nil
	case "gzip":
		return []string{"--gzip"}
	case "bzip2":
		return []string{"--bzip2"}
	default:
		return []string{"--" + b.Compression}
	}
}

func (b Barman) command(name string, args ...string) []string {
	return append([]string{name, "-q", "--cloud-provider", "aws-s3", "--endpoint-url", b.Endpoint}, args...)
}

// Backup is barman-cloud-backup of the cluster c (run as postgres: it reads
// the data directory) with an immediate checkpoint.
func (b Barman) Backup(c *Cluster) []string {
	args := b.command("barman-cloud-backup", b.compressionFlag()...)
	args = append(args, "--immediate-checkpoint", "-h", c.Work, "-p", "5432", "-U", "postgres", b.URL, b.Server)
	return AsPostgres(args...)
}

// Restore is barman-cloud-restore of the backup id into dir.
func (b Barman) Restore(id, dir string) []string {
	return b.command("barman-cloud-restore", b.URL, b.Server, id, dir)
}

// WALArchive is barman-cloud-wal-archive of one WAL file, as archive_command
// runs it.
func (b Barman) WALArchive(path string) []string {
	args := b.command("barman-cloud-wal-archive", b.compressionFlag()...)
	return append(args, b.URL, b.Server, path)
}

// WALRestore is barman-cloud-wal-restore of one WAL file, as
// restore_command runs it.
func (b Barman) WALRestore(name, dest string) []string {
	return b.command("barman-cloud-wal-restore", b.URL, b.Server, name, dest)
}

// Newest is the id of the newest backup (barman-cloud-backup-list).
func (b Barman) Newest(ctx context.Context, env []string) (string, error) {
	out, err := Command(ctx, env, b.command("barman-cloud-backup-list", "--format", "json", b.URL, b.Server)).Output()
	if err != nil {
		return "", fmt.Errorf("barman-cloud-backup-list: %w", err)
	}
	var list struct {
		Backups []struct {
			ID string `json:"backup_id"`
		} `json:"backups_list"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return "", fmt.Errorf("barman-cloud-backup-list: %w\n%s", err, out)
	}
	if len(list.Backups) == 0 {
		return "", fmt.Errorf("barman-cloud-backup-list: no backup in %s", b.URL)
	}
	return list.Backups[len(list.Backups)-1].ID, nil
}
