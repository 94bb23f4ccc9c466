package sim

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestLargeClusterSeeds runs clusters larger than the default (where
// more nodes join at once than a node is given join addresses, and every
// epoch change has tens of members listing and announcing to each other)
// with every fault on: every run must pass every check, and a run
// replayed gives the same trace.
func TestLargeClusterSeeds(t *testing.T) {
	if testing.Short() {
		t.Skip("large clusters")
	}
	tests := []struct {
		nodes int
		first uint64
		runs  int
	}{
		{20, 1, 3},
		{30, 100, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("nodes=%d", tt.nodes), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Nodes = tt.nodes
			cfg.Ops = 1000
			s := batch(t, cfg, tt.first, tt.runs)
			t.Log(s)
			if len(s.Failures) > 0 {
				t.Fatalf("%d nodes: %d of %d seeds failed:%s", tt.nodes, len(s.Failures), s.Runs, describeFailures(cfg, s))
			}
			cfg.Seed = tt.first
			first, again := Run(cfg).TraceHash, Run(cfg).TraceHash
			if diff := cmp.Diff(first, again); diff != "" {
				t.Fatalf("%d nodes, seed %d: same seed, different traces (-first +again):\n%s", tt.nodes, tt.first, diff)
			}
		})
	}
}

// TestClusterFormsInFewEpochs: nodes that start together are admitted
// together, as learners of the cluster log in one configuration change
// and as members in one epoch change per batch, not one per node (which
// made forming a cluster of n nodes cost n epochs, each with every member
// listing to every other).
func TestClusterFormsInFewEpochs(t *testing.T) {
	for _, nodes := range []int{12, 40} {
		t.Run(fmt.Sprintf("nodes=%d", nodes), func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Nodes, cfg.Seed = nodes, 1
			h, err := NewHarness(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if e := h.Cluster().Epoch; e > 6 {
				t.Fatalf("%d nodes formed a cluster in %d epochs, want at most 6", nodes, e)
			}
		})
	}
}
