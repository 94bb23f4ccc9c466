package core_test

import (
	"fmt"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
)

// TestGrayFailureEnds: two members that cannot reach each other in one
// direction, while the leader hears both (the real-process case: nftables
// dropping packets to one node's address only). Writes whose replicas
// include both would wait for ever; the members report each other, the
// leader takes one of them out of the epoch, and every write completes
// within a bound of a few failure timeouts. Once the link heals the node
// comes back and the cluster is whole again.
func TestGrayFailureEnds(t *testing.T) {
	for _, tt := range []struct {
		seed    uint64
		twoWays bool
	}{{1, false}, {2, false}, {3, true}, {4, false}, {5, true}} {
		t.Run(fmt.Sprintf("seed%d", tt.seed), func(t *testing.T) {
			cfg := sim.DefaultConfig()
			cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift, cfg.Seed = 4, 0, 3, 12, tt.seed
			h, err := sim.NewHarness(cfg)
			if err != nil {
				t.Fatal(err)
			}
			lead := h.Leader()
			if lead < 0 {
				t.Fatal("no leader")
			}
			var others []int
			for i := 0; i < cfg.Nodes; i++ {
				if i != lead {
					others = append(others, i)
				}
			}
			a, b := others[0], others[1]
			const objects = 16
			if rep, ok := h.Request(lead, &core.Request{Type: core.ReqCreateVDI, Name: "vm", Size: objects << 12}); !ok || rep.Code != core.OK {
				t.Fatalf("create: %v %v", rep.Code, ok)
			}
			vid := h.Cluster().LookupVDI("vm").ID
			if rep, ok := h.Request(lead, &core.Request{Type: core.ReqAttach, VID: vid}); !ok || rep.Code != core.OK {
				t.Fatalf("attach: %v", rep.Code)
			}
			write := func(value byte) (worst int64) {
				t.Helper()
				left := objects
				for i := 0; i < objects; i++ {
					data := make([]byte, 512)
					data[0] = value
					start := h.Now()
					h.Submit(lead, &core.Request{Type: core.ReqWrite, VID: vid, Off: uint64(i) << 12, Len: 512, Data: data}, func(rep core.Reply) {
						left--
						if rep.Code != core.OK {
							t.Errorf("write %d of object %d: %v", value, i, rep.Code)
						}
						worst = max(worst, h.Now()-start)
					})
				}
				if !h.RunUntil(func() bool { return left == 0 }, 60_000_000) {
					t.Fatalf("%d writes of value %d never answered", left, value)
				}
				return worst
			}
			write(1)
			h.CutOneWay(a, b)
			if tt.twoWays {
				h.CutOneWay(b, a)
			}
			// The bound: a resend (RetryTicks), a report older than
			// FailTicks, the epoch change and the resent writes: well under
			// ten failure timeouts (the simulator's is 300 ms).
			const bound = 3_000_000
			worst := write(2)
			t.Logf("worst write across the gray failure: %d ms", worst/1000)
			if worst > bound {
				t.Errorf("a write took %d ms across the gray failure, more than %d ms", worst/1000, bound/1000)
			}
			if h.Member(a) && h.Member(b) {
				t.Errorf("nodes %d and %d both still members: the gray failure was never acted on", a, b)
			}
			h.Heal()
			if !h.RunUntil(func() bool { return h.Member(a) && h.Member(b) }, 60_000_000) {
				t.Fatalf("the node taken out did not come back after the link healed")
			}
			if !h.Stabilize() {
				t.Fatal("did not converge")
			}
			if ps := h.Problems(); len(ps) > 0 {
				t.Fatalf("problems: %v", ps)
			}
			for i := 0; i < objects; i++ {
				rep, ok := h.Request(others[2], &core.Request{Type: core.ReqRead, VID: vid, Off: uint64(i) << 12, Len: 512})
				if !ok || rep.Code != core.OK || rep.Data[0] != 2 {
					t.Fatalf("object %d reads %v %v, want value 2", i, rep.Code, rep.Data[:1])
				}
			}
		})
	}
}
