package core

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

// traffic is what recovery moves when the ring changes from one node
// list to another, as exact expectations over uniformly hashed objects
// (every arc between consecutive vnodes of either ring is placed alike).
type traffic struct {
	moved     float64 // replicas fetched, as a fraction of all replicas
	recvMax   float64 // the busiest receiver's fetches over the mean member's
	sendMax   float64 // the busiest sender's over the mean old member's
	receivers int     // members that fetch anything
}

// recoveryTraffic compares the placements of copies replicas under old
// and new. Every member of new fetches the replicas it gains; it fetches
// each from a random holder of the old placement that is still a member
// (recovery's fetch), so a sender's work is its share of those holders.
func recoveryTraffic(old, new []NodeInfo, copies int) traffic {
	ro, rn := NewRing(old), NewRing(new)
	members := map[NodeID]bool{}
	for _, m := range new {
		members[m.ID] = true
	}
	points := make([]uint64, 0, len(ro.vnodes)+len(rn.vnodes))
	for _, v := range ro.vnodes {
		points = append(points, v.hash)
	}
	for _, v := range rn.vnodes {
		points = append(points, v.hash)
	}
	slices.Sort(points)
	points = slices.Compact(points)
	// pos advances i to the first vnode of r at or after h (the points
	// come in order), as Place's search would find it.
	pos := func(r *Ring, i *int, h uint64) int {
		for *i < len(r.vnodes) && r.vnodes[*i].hash < h {
			*i++
		}
		return *i % len(r.vnodes)
	}
	io, in := 0, 0
	recv, send := map[NodeID]float64{}, map[NodeID]float64{}
	var a, b, src []NodeID
	moved := 0.0
	for i, p := range points {
		// The arc (previous point, p] maps to the same vnode in each ring.
		arc := float64(p-points[(i-1+len(points))%len(points)]) / math.Pow(2, 64)
		if len(points) == 1 {
			arc = 1
		}
		a = ro.placeFrom(a[:0], pos(ro, &io, p), copies)
		b = rn.placeFrom(b[:0], pos(rn, &in, p), copies)
		src = src[:0]
		for _, id := range a {
			if members[id] {
				src = append(src, id)
			}
		}
		for _, id := range b {
			if slices.Contains(a, id) {
				continue
			}
			moved += arc
			recv[id] += arc
			for _, s := range src {
				send[s] += arc / float64(len(src))
			}
		}
	}
	maxOver := func(m map[NodeID]float64, n int) float64 {
		total, mx := 0.0, 0.0
		for _, v := range m {
			total += v
			mx = max(mx, v)
		}
		if total == 0 {
			return 0
		}
		return mx / (total / float64(n))
	}
	return traffic{
		moved:     moved / float64(min(copies, rn.zones)),
		recvMax:   maxOver(recv, len(new)),
		sendMax:   maxOver(send, len(old)),
		receivers: len(recv),
	}
}

// trafficCase is one change of the node list and the fraction of the
// replicas that must move at least.
type trafficCase struct {
	name     string
	old, new []NodeInfo
	ideal    float64
}

// trafficCases are one join and one leave at each cluster size.
func trafficCases(sizes []int, vnodes uint16) []trafficCase {
	var out []trafficCase
	for _, n := range sizes {
		nodes := testNodes(n+1, vnodes)
		out = append(out,
			trafficCase{fmt.Sprintf("join/nodes=%d/vnodes=%d", n, vnodes), nodes[:n], nodes, 1 / float64(n+1)},
			trafficCase{fmt.Sprintf("leave/nodes=%d/vnodes=%d", n, vnodes), nodes[:n], slices.Delete(slices.Clone(nodes[:n]), n/2, n/2+1), 1 / float64(n)},
		)
	}
	return out
}

// TestRecoveryTraffic: a join or a leave moves at most 10% more than the
// ideal share (1/(n+1) of the replicas for a join, 1/n for a leave), and
// at up to 100 nodes no member sends, or after a leave fetches, more than
// 2.5 times the mean (a node's vnodes spread its share over the others).
// BenchmarkRecoveryTraffic has the figures at 1,000 nodes.
func TestRecoveryTraffic(t *testing.T) {
	for _, tt := range trafficCases([]int{10, 100}, DefaultVNodes) {
		t.Run(tt.name, func(t *testing.T) {
			got := recoveryTraffic(tt.old, tt.new, 3)
			t.Logf("moved %.5f of the replicas (ideal %.5f, %.3fx), %d receivers, busiest receiver %.2fx the mean, busiest sender %.2fx",
				got.moved, tt.ideal, got.moved/tt.ideal, got.receivers, got.recvMax, got.sendMax)
			if got.moved > 1.1*tt.ideal {
				t.Errorf("moved %.5f > 1.1 × ideal %.5f", got.moved, tt.ideal)
			}
			if got.sendMax > 2.5 {
				t.Errorf("busiest sender %.2fx the mean > 2.5", got.sendMax)
			}
			if len(tt.new) < len(tt.old) && got.recvMax > 2.5 {
				t.Errorf("busiest receiver %.2fx the mean > 2.5", got.recvMax)
			}
		})
	}
}

// BenchmarkRecoveryTraffic reports the traffic of one join and one leave
// at 100 and 1,000 nodes, at the default ring weight and at the
// simulator's 64 vnodes: moved/ideal (1 is ideal), and the busiest
// receiver's and sender's work over the mean (recv-max/mean,
// send-max/mean), and how many members fetch anything.
func BenchmarkRecoveryTraffic(b *testing.B) {
	for _, vnodes := range []uint16{DefaultVNodes, 64} {
		for _, tt := range trafficCases([]int{100, 1000}, vnodes) {
			b.Run(tt.name, func(b *testing.B) {
				var got traffic
				for b.Loop() {
					got = recoveryTraffic(tt.old, tt.new, 3)
				}
				b.ReportMetric(got.moved/tt.ideal, "moved/ideal")
				b.ReportMetric(got.recvMax, "recv-max/mean")
				b.ReportMetric(got.sendMax, "send-max/mean")
				b.ReportMetric(float64(got.receivers), "receivers")
			})
		}
	}
}
