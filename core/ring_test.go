package core

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testNodes(n int, vnodes uint16) []NodeInfo {
	nodes := make([]NodeInfo, n)
	for i := range nodes {
		nodes[i] = NodeInfo{ID: NodeID(i + 1), Addr: fmt.Sprintf("10.%d.%d.%d:7000", i/65536, i/256%256, i%256+1), Zone: uint32(i + 1), VNodes: vnodes}
	}
	return nodes
}

// shares is each node's exact expected share of the replicas: every arc
// of the ring maps to one replica set.
func shares(r *Ring, copies int) map[NodeID]float64 {
	out := map[NodeID]float64{}
	n := len(r.vnodes)
	var buf []NodeID
	for i := 0; i < n; i++ {
		arc := float64(r.vnodes[i].hash - r.vnodes[(i-1+n)%n].hash)
		buf = r.placeFrom(buf[:0], i, copies)
		for _, id := range buf {
			out[id] += arc / math.Pow(2, 64)
		}
	}
	return out
}

func maxOverMean(r *Ring, copies int) float64 {
	s := shares(r, copies)
	total, mx := 0.0, 0.0
	for _, v := range s {
		total += v
		mx = max(mx, v)
	}
	return mx / (total / float64(len(s)))
}

// TestRingBalance: with the default weight, the fullest node holds at most
// 10% more than the mean, for 10 to 100 nodes and 1 or 3 copies. The
// figures for Sheepdog's own 128 vnodes are logged for comparison.
func TestRingBalance(t *testing.T) {
	for _, n := range []int{10, 20, 30, 50, 75, 100} {
		for _, copies := range []int{1, 3} {
			got := maxOverMean(NewRing(testNodes(n, DefaultVNodes)), copies)
			old := maxOverMean(NewRing(testNodes(n, 128)), copies)
			t.Logf("nodes=%3d copies=%d max/mean=%.3f (128 vnodes: %.3f)", n, copies, got, old)
			if got > 1.10 {
				t.Errorf("nodes=%d copies=%d: max/mean load %.3f > 1.10", n, copies, got)
			}
		}
	}
}

// TestRingMovementOnJoin: adding a node moves little more than the
// share it takes over (the ideal is 1/(n+1) of all replicas).
func TestRingMovementOnJoin(t *testing.T) {
	for _, n := range []int{10, 20, 50, 100} {
		for _, copies := range []int{1, 3} {
			nodes := testNodes(n+1, DefaultVNodes)
			before, after := NewRing(nodes[:n]), NewRing(nodes)
			const objs = 100_000
			moved := 0
			var a, b []NodeID
			for i := 0; i < objs; i++ {
				oid := DataOID(uint32(i/1000+1), uint32(i%1000))
				a = before.Place(a[:0], oid, copies)
				b = after.Place(b[:0], oid, copies)
				for _, id := range b {
					if !slices.Contains(a, id) {
						moved++
					}
				}
			}
			frac := float64(moved) / float64(objs*copies)
			t.Logf("nodes %d→%d copies=%d moved=%.4f ideal=%.4f", n, n+1, copies, frac, 1/float64(n+1))
			if frac > 1.1/float64(n) {
				t.Errorf("nodes %d→%d copies=%d: moved %.4f > 1.1/n = %.4f", n, n+1, copies, frac, 1.1/float64(n))
			}
		}
	}
}

func TestRingPlacement(t *testing.T) {
	tests := []struct {
		name   string
		nodes  []NodeInfo
		copies int
		want   int
	}{
		{"three nodes, three copies", testNodes(3, 64), 3, 3},
		{"copies above nodes", testNodes(2, 64), 3, 2},
		{"one zone", func() []NodeInfo {
			ns := testNodes(4, 64)
			for i := range ns {
				ns[i].Zone = 7
			}
			return ns
		}(), 3, 1},
		{"two zones", func() []NodeInfo {
			ns := testNodes(6, 64)
			for i := range ns {
				ns[i].Zone = uint32(i % 2)
			}
			return ns
		}(), 3, 2},
		{"gateway nodes hold nothing", append(testNodes(3, 64), NodeInfo{ID: 99, Addr: "10.9.9.9:7000", Zone: 99}), 3, 3},
		{"no data nodes", []NodeInfo{{ID: 1, Addr: "10.0.0.1:7000", Zone: 1}}, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRing(tt.nodes)
			for i := 0; i < 1000; i++ {
				got := r.Place(nil, DataOID(1, uint32(i)), tt.copies)
				if len(got) != tt.want {
					t.Fatalf("object %d: %d replicas, want %d", i, len(got), tt.want)
				}
				zones := map[uint32]bool{}
				for _, id := range got {
					n := tt.nodes[slices.IndexFunc(tt.nodes, func(n NodeInfo) bool { return n.ID == id })]
					if zones[n.Zone] || n.VNodes == 0 {
						t.Fatalf("object %d: replicas %v share a zone or use a gateway", i, got)
					}
					zones[n.Zone] = true
				}
			}
		})
	}
}

// TestRingIsPureFunctionOfNodeList: order of the input does not matter.
func TestRingIsPureFunctionOfNodeList(t *testing.T) {
	nodes := testNodes(7, 32)
	rev := slices.Clone(nodes)
	slices.Reverse(rev)
	a, b := NewRing(nodes), NewRing(rev)
	for i := 0; i < 500; i++ {
		oid := DataOID(5, uint32(i))
		if diff := cmp.Diff(a.Place(nil, oid, 3), b.Place(nil, oid, 3)); diff != "" {
			t.Fatalf("object %d placed differently: %s", i, diff)
		}
	}
}

// TestRingMatchesSheepdogVnodeHashes pins the vnode positions to
// Sheepdog's node_to_vnodes: sd_hash over the 16-byte address and the
// port, then sd_hash_next for each further vnode.
func TestRingMatchesSheepdogVnodeHashes(t *testing.T) {
	var nid [18]byte
	nid[10], nid[11] = 0xff, 0xff
	nid[12], nid[13], nid[14], nid[15] = 127, 0, 0, 1
	nid[16], nid[17] = byte(7000&0xff), byte(7000>>8)
	h := fnv64a(nid[:], fnv1a64Init)
	h = fnv64a64(h, h)
	want := []uint64{}
	for i := 0; i < 3; i++ {
		h = fnv64a64(h, h)
		want = append(want, h)
	}
	r := NewRing([]NodeInfo{{ID: 1, Addr: "127.0.0.1:7000", Zone: 1, VNodes: 3}})
	var got []uint64
	for _, v := range r.vnodes {
		got = append(got, v.hash)
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("vnode hashes differ from Sheepdog's (-want +got):\n%s", diff)
	}
}

// TestNextRingMatchesNewRing: a ring built from the previous epoch's (and
// one taken from a RingCache) is the ring NewRing builds from scratch,
// through joins, leaves, replaced members, gateways and re-weightings.
func TestNextRingMatchesNewRing(t *testing.T) {
	pool := testNodes(40, 16)
	for i := range pool {
		pool[i].Zone = uint32(i % 7)
	}
	pool[5].VNodes = 0 // a gateway
	rng := rand.New(rand.NewPCG(1, 2))
	in := map[int]bool{}
	var prev *Ring
	cache := NewRingCache()
	for step := 0; step < 400; step++ {
		for k := 0; k < 1+rng.IntN(3); k++ {
			i := rng.IntN(len(pool))
			switch rng.IntN(4) {
			case 0:
				pool[i].VNodes = uint16(rng.IntN(32))
			case 1:
				pool[i].Addr = fmt.Sprintf("10.1.%d.%d:7000", step%256, i)
			default:
				in[i] = !in[i]
			}
		}
		if step%50 == 0 { // everything changes at once
			for i := range pool {
				in[i] = rng.IntN(2) == 0
			}
		}
		var nodes []NodeInfo
		for i, n := range pool {
			if in[i] {
				nodes = append(nodes, n)
			}
		}
		want := NewRing(nodes)
		got := nextRing(prev, nodes)
		cached := cache.ring(prev, uint32(step%9), nodes)
		for name, r := range map[string]*Ring{"nextRing": got, "RingCache": cached} {
			if diff := cmp.Diff(want, r, cmp.AllowUnexported(Ring{}, vnode{})); diff != "" {
				t.Fatalf("step %d: %s's ring differs from NewRing's (-want +got):\n%s", step, name, diff)
			}
		}
		prev = got
	}
}
