package core_test

import (
	"bytes"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/sim"
)

// Stories of a snapshot racing the cluster's other moving parts, told
// with the harness because they need roles the random stream decides
// (which node leads, which is an object's primary): each test tries
// seeds until the roles fit, and fails if none does.

const raceObj = 1 << 12 // the object size of these clusters

// raceCluster starts nodes nodes with copies copies and a VDI name of
// objs objects, every object written with value 1.
func raceCluster(t *testing.T, seed uint64, name string, nodes, copies int, objs uint64) (*sim.Harness, uint32) {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Nodes, cfg.Spares, cfg.Copies, cfg.BlockShift, cfg.Seed = nodes, 0, copies, 12, seed
	h, err := sim.NewHarness(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep, ok := h.Request(0, &core.Request{Type: core.ReqCreateVDI, Name: name, Size: objs * raceObj}); !ok || rep.Code != core.OK {
		t.Fatalf("create: %v %v", rep.Code, ok)
	}
	vid := h.Cluster().LookupVDI(name).ID
	raceRequest(t, h, 0, &core.Request{Type: core.ReqAttach, VID: vid})
	raceRequest(t, h, 0, &core.Request{Type: core.ReqWrite, VID: vid, Len: objs * raceObj, Data: fill(int(objs*raceObj), 1)})
	raceRequest(t, h, 0, &core.Request{Type: core.ReqDetach, VID: vid})
	return h, vid
}

func raceRequest(t *testing.T, h *sim.Harness, node int, r *core.Request) core.Reply {
	t.Helper()
	rep, ok := h.Request(node, r)
	if !ok || rep.Code != core.OK {
		t.Fatalf("%v at node %d: %v (answered: %v)", r.Type, node, rep.Code, ok)
	}
	return rep
}

func raceLeader(h *sim.Harness) int {
	for i := range h.Nodes() {
		if h.Up(i) && h.Node(i).IsLeader() {
			return i
		}
	}
	return -1
}

// primaryOf is the index of oid's primary in the current epoch.
func primaryOf(h *sim.Harness, oid core.OID, copies int) int {
	n := h.Node(0)
	id := n.Ring().Place(nil, oid, copies)[0]
	for i := range h.Nodes() {
		if h.Node(i).ID() == id {
			return i
		}
	}
	return -1
}

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

// TestCOWLinkRefusedAttacherBehind: a copy-on-write's copy is written,
// then its table entry is refused because the table's primary applied a
// snapshot that the attacher, cut off from the leader, has not. The
// write must not be acknowledged until it is redone on the new working
// VDI: sent again to the unlinked copy, whose primary holds a write of
// the same id (the copy), it was taken for a retry and acknowledged, and
// lost with the copy (seed 19 of TestSeeds).
func TestCOWLinkRefusedAttacherBehind(t *testing.T) {
	const nodes, copies, objs = 5, 2, 16
	tried := 0
	// Placement follows the VDI ids, which follow the name.
	for i := 0; i < 60 && tried < 6; i++ {
		seed, name := uint64(1+i%3), "vm"+strconv.Itoa(i)
		h, _ := raceCluster(t, seed, name, nodes, copies, objs)
		lead := raceLeader(h)
		// The working VDI after a snapshot shares every object; its table
		// is one chunk.
		base := raceRequest(t, h, lead, &core.Request{Type: core.ReqSnapshot, Name: name, Tag: "base"})
		work, snap := base.VID, base.Snap
		ptab := primaryOf(h, core.TableOID(work, 0), copies)
		if ptab == lead {
			continue
		}
		// Roles: the attacher is cut off from the leader and, for a while,
		// from the table's primary; the copy's primary and the shared
		// object's primary stay reachable.
		att, idx := -1, -1
		for a := range nodes {
			if a == lead || a == ptab {
				continue
			}
			for x := 1; x < objs; x++ {
				pd := primaryOf(h, core.DataOID(work, uint32(x)), copies)
				ps := primaryOf(h, core.DataOID(snap, uint32(x)), copies)
				if !slices.Contains([]int{lead, ptab, a}, pd) && ps != lead && ps != ptab {
					att, idx = a, x
					break
				}
			}
			if att >= 0 {
				break
			}
		}
		if att < 0 {
			continue
		}
		tried++
		t.Logf("seed %d: leader %d, attacher %d, table primary %d, object %d", seed, lead, att, ptab, idx)
		raceRequest(t, h, att, &core.Request{Type: core.ReqAttach, VID: work})
		// A first copy-on-write (object 0) caches the table at the attacher.
		raceRequest(t, h, att, &core.Request{Type: core.ReqWrite, VID: work, Off: 0, Len: 512, Data: fill(512, 1)})

		h.Cut(att, lead)
		h.Cut(att, ptab)
		off := uint64(idx)*raceObj + 1024
		var wrote *core.Reply
		h.Submit(att, &core.Request{Type: core.ReqWrite, VID: work, Off: off, Len: 512, Data: fill(512, 2)}, func(r core.Reply) { wrote = &r })
		h.Run(20_000) // the copy is written; its entry waits for the table's primary
		h.Submit(lead, &core.Request{Type: core.ReqSnapshot, Name: name, Tag: "live"}, func(core.Reply) {})
		if !h.RunUntil(func() bool { v := h.Node(ptab).Cluster().VDI(work); return v != nil && v.IsSnapshot() }, 100_000) {
			t.Fatalf("seed %d: the table's primary never applied the snapshot", seed)
		}
		h.Heal()
		h.Cut(att, lead) // the entry reaches the table's primary, refused; the attacher still does not know why
		h.Run(150_000)
		h.Heal()
		if !h.RunUntil(func() bool { return wrote != nil }, 60_000_000) {
			t.Fatalf("seed %d: the write was never answered", seed)
		}
		if wrote.Code != core.OK {
			t.Fatalf("seed %d: the write failed: %v", seed, wrote.Code)
		}
		if !h.Stabilize() {
			t.Fatalf("seed %d: the cluster did not converge", seed)
		}
		got := raceRequest(t, h, lead, &core.Request{Type: core.ReqRead, VID: h.Cluster().LookupVDI(name).ID, Off: off, Len: 512})
		if !bytes.Equal(got.Data, fill(512, 2)) {
			t.Fatalf("seed %d: an acknowledged write to object %d is lost: the VDI reads %#x", seed, idx, got.Data[0])
		}
		if ps := h.Problems(); len(ps) > 0 {
			t.Fatalf("seed %d: %s", seed, strings.Join(ps, "; "))
		}
	}
	if tried == 0 {
		t.Fatal("no seed gave roles that fit")
	}
}

// TestRestampTwoBuildersOneEpoch: the leader building a snapshot is
// deposed while it re-stamps the snapshot's objects, after its re-stamps
// reached some replicas of an object but not its primary; a new leader
// of the same epoch builds again. Its barrier finds the newest version to
// be the first builder's re-stamp, which is its own re-stamp version too:
// it must still re-stamp the copies the first one did not reach, or the
// primary's copy falls below the seal and reads as a hole (seed 197 with
// crash,loss,partition,oneway,wipe).
func TestRestampTwoBuildersOneEpoch(t *testing.T) {
	const nodes, copies, objs = 5, 3, 8
	tried := 0
	for i := 0; i < 60 && tried < 4; i++ {
		seed, name := uint64(1+i%3), "vm"+strconv.Itoa(i)
		h, vid := raceCluster(t, seed, name, nodes, copies, objs)
		lead := raceLeader(h)
		x, prim := -1, -1
		for k := range objs {
			// The old leader holds no copy: the primary needs no lease of it.
			reps := h.Node(0).Ring().Place(nil, core.DataOID(vid, uint32(k)), copies)
			if !slices.Contains(reps, h.Node(lead).ID()) {
				x, prim = k, primaryOf(h, core.DataOID(vid, uint32(k)), copies)
				break
			}
		}
		via := -1
		for a := range nodes {
			if a != lead && a != prim {
				via = a
				break
			}
		}
		if x < 0 || via < 0 {
			continue
		}
		epoch := h.Node(lead).Epoch()
		var snapped *core.Reply
		h.Submit(via, &core.Request{Type: core.ReqSnapshot, Name: name, Tag: "s"}, func(r core.Reply) { snapped = &r })
		stamping := func() bool {
			return slices.ContainsFunc(h.Node(lead).Jobs(), func(j string) bool { return strings.Contains(j, "stamping") })
		}
		if !h.RunUntil(stamping, 5_000_000) {
			t.Fatalf("%s: the leader never re-stamped", name)
		}
		h.Cut(lead, prim) // the re-stamps reach every member but the primary
		h.Run(2_000)
		for a := range nodes {
			if a != lead {
				h.Cut(lead, a)
			}
		}
		other := func() bool {
			for a := range nodes {
				if a != lead && h.Node(a).IsLeader() {
					return true
				}
			}
			return false
		}
		if !h.RunUntil(other, 2_000_000) {
			t.Fatalf("%s: no new leader", name)
		}
		h.Heal()
		h.Cut(lead, prim)
		built := func() bool {
			v := h.Node(via).Cluster().VDI(vid)
			return snapped != nil || (v != nil && v.SealVersion != 0)
		}
		if !h.RunUntil(built, 5_000_000) {
			t.Fatalf("%s: the snapshot was never built", name)
		}
		if h.Node(via).Epoch() != epoch || h.Node(prim).Epoch() != epoch {
			continue // the old leader was declared dead: not the story
		}
		tried++
		t.Logf("%s (seed %d): leader %d deposed, object %d's primary %d, request through %d", name, seed, lead, x, prim, via)
		got := raceRequest(t, h, via, &core.Request{Type: core.ReqRead, VID: vid, Exact: true, Off: uint64(x) * raceObj, Len: raceObj})
		if !bytes.Equal(got.Data, fill(raceObj, 1)) {
			t.Fatalf("%s: snapshot object %d reads %#x, not what it held", name, x, got.Data[0])
		}
		h.Heal()
		if !h.Stabilize() {
			t.Fatalf("%s: the cluster did not converge", name)
		}
		if ps := h.Problems(); len(ps) > 0 {
			t.Fatalf("%s: %s", name, strings.Join(ps, "; "))
		}
	}
	if tried == 0 {
		t.Fatal("no case kept its epoch through the leader change")
	}
}
