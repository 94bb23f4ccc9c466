package daemon

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/core"
)

// TestTickClock: every tick that passed is delivered once, however late
// the node runs (up to maxCatchUp at once), and the loop's next run is
// the next tick, or the core.QuietTicks-th while the node is quiet.
func TestTickClock(t *testing.T) {
	const tick = 20 * time.Millisecond
	type step struct {
		At    time.Duration
		Ticks int           // delivered by advance(At)
		Next  time.Duration // next(false)
		Quiet time.Duration // next(true)
	}
	tests := []struct {
		name string
		at   []time.Duration
		want []step
	}{
		{"on time", []time.Duration{tick, 2 * tick, 3 * tick}, []step{
			{tick, 1, 2 * tick, (1 + core.QuietTicks) * tick},
			{2 * tick, 1, 3 * tick, (2 + core.QuietTicks) * tick},
			{3 * tick, 1, 4 * tick, (3 + core.QuietTicks) * tick},
		}},
		{"between ticks", []time.Duration{tick / 2, tick + tick/2, tick + tick/2 + 1}, []step{
			{tick / 2, 0, tick, core.QuietTicks * tick},
			{tick + tick/2, 1, 2 * tick, (1 + core.QuietTicks) * tick},
			{tick + tick/2 + 1, 0, 2 * tick, (1 + core.QuietTicks) * tick},
		}},
		{"a late run delivers what it missed", []time.Duration{7*tick + 3}, []step{
			{7*tick + 3, 7, 8 * tick, (7 + core.QuietTicks) * tick},
		}},
		{"an event stamped before the last run", []time.Duration{5 * tick, 3 * tick}, []step{
			{5 * tick, 5, 6 * tick, (5 + core.QuietTicks) * tick},
			{3 * tick, 0, 6 * tick, (5 + core.QuietTicks) * tick},
		}},
		{"a long stop is capped", []time.Duration{(maxCatchUp + 100) * tick}, []step{
			{(maxCatchUp + 100) * tick, maxCatchUp, (maxCatchUp + 101) * tick, (maxCatchUp + 100 + core.QuietTicks) * tick},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tickClock{tick: tick}
			var got []step
			for _, at := range tt.at {
				k := c.advance(at)
				got = append(got, step{at, k, c.next(false), c.next(true)})
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
		})
	}
}
