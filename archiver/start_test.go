package archiver

import (
	"testing"

	"github.com/walship/walship/internal/wal"
)

func TestFirstHole(t *testing.T) {
	const seg = 1 << 20
	cases := []struct {
		complete []uint64
		acked    wal.LSN
		want     uint64
	}{
		{[]uint64{1, 2, 3}, 3 * seg, 4},
		{[]uint64{1, 2, 3, 5, 6}, 2 * seg, 4},     // a hole after the acknowledged position
		{[]uint64{1, 2, 3, 5, 6}, 5*seg + 100, 7}, // a hole before it is an old gap, not ours
		{[]uint64{5, 6, 8}, 3 * seg, 7},           // the slot is older than the repository
		{[]uint64{1, 2}, 9 * seg, 3},              // the slot is ahead: resume at the end, the server says if it is gone
		{[]uint64{1, 2, 4}, unknownLSN, 3},        // unknown: holes among the newest segments
		{[]uint64{1, 3, 400, 401, 403}, unknownLSN, 402},
		{[]uint64{1, 3, 400, 401}, unknownLSN, 402},
	}
	for _, c := range cases {
		if got := firstHole(c.complete, c.acked, seg); got != c.want {
			t.Errorf("firstHole(%v, %s) = %d, want %d", c.complete, c.acked, got, c.want)
		}
	}
}
