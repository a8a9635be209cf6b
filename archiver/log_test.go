package archiver

import (
	"log/slog"
	"testing"

	"github.com/walship/walship/internal/testlog"
)

func testLogger(t *testing.T) *slog.Logger { return testlog.New(t) }
