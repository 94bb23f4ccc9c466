package core_test

import (
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
	"go.etcd.io/raft/v3/raftpb"
)

// quietHarness is a formatted 3-node cluster with a VDI attached on node 0.
func quietHarness(t *testing.T) (*sim.Harness, uint32) {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift = 3, 0, 3, 12
	h, err := sim.NewHarness(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, ok := h.Request(0, &core.Request{Type: core.ReqCreateVDI, Name: "v", Size: 1 << 20, Copies: 3, BlockShift: 12})
	if !ok || rep.Code != core.OK {
		t.Fatalf("create: %+v (answered %v)", rep, ok)
	}
	vid := rep.VID
	if rep, ok := h.Request(0, &core.Request{Type: core.ReqAttach, VID: vid}); !ok || rep.Code != core.OK {
		t.Fatalf("attach: %+v (answered %v)", rep, ok)
	}
	if !h.Stabilize() {
		t.Fatal("the cluster did not stabilize")
	}
	return h, vid
}

func allQuiet(h *sim.Harness) bool {
	for i := 0; i < h.Nodes(); i++ {
		if !h.Node(i).Quiet() {
			return false
		}
	}
	return true
}

// TestQuiet: a settled cluster is quiet; a client write, and then a
// crashed member's recovery, make the nodes involved busy until they are
// done, and quiet again afterwards.
func TestQuiet(t *testing.T) {
	h, vid := quietHarness(t)
	const second = 1_000_000
	if !h.RunUntil(func() bool { return allQuiet(h) }, 10*second) {
		t.Fatal("a settled cluster never became quiet")
	}

	var rep core.Reply
	answered := false
	h.Submit(0, &core.Request{Type: core.ReqWrite, VID: vid, Off: 0, Data: make([]byte, 4096)}, func(r core.Reply) { rep, answered = r, true })
	if h.Node(0).Quiet() {
		t.Fatal("the gateway of a write in flight is quiet")
	}
	if !h.RunUntil(func() bool { return answered }, 10*second) || rep.Code != core.OK {
		t.Fatalf("write: %+v (answered %v)", rep, answered)
	}
	if !h.RunUntil(func() bool { return allQuiet(h) }, 10*second) {
		t.Fatal("the cluster did not become quiet after a write")
	}

	h.Crash(2)
	h.Restart(2)
	if !h.RunUntil(func() bool { return !h.Node(2).Quiet() }, second) {
		t.Fatal("a restarted node was quiet while it rejoined")
	}
	if !h.Stabilize() {
		t.Fatal("the cluster did not recover the restarted node")
	}
	if !h.RunUntil(func() bool { return allQuiet(h) }, 10*second) {
		t.Fatal("the cluster did not become quiet after the recovery")
	}
}

// TestBurstOfTicksSendsOneHeartbeat: the leader's ticks delivered in one
// burst, as a driver does for a quiet node, send one heartbeat to each
// follower, not one per tick.
func TestBurstOfTicksSendsOneHeartbeat(t *testing.T) {
	h, _ := quietHarness(t)
	lead := h.Leader()
	if lead < 0 {
		t.Fatal("no leader")
	}
	n := h.Node(lead)
	if n.HasReady() {
		n.Ready()
		n.Advance()
	}
	for range core.QuietTicks {
		n.Step(core.Tick{})
	}
	beats := map[core.NodeID]int{}
	for _, m := range n.Ready().Messages {
		if m.Type == core.MsgRaft && m.Raft.Type == raftpb.MsgHeartbeat {
			beats[m.To]++
		}
	}
	n.Advance()
	if len(beats) != h.Nodes()-1 {
		t.Fatalf("heartbeats went to %d followers, want %d: %v", len(beats), h.Nodes()-1, beats)
	}
	for to, c := range beats {
		if c != 1 {
			t.Errorf("%d heartbeats to %d in one burst of %d ticks, want 1", c, to, core.QuietTicks)
		}
	}
}
