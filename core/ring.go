package core

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// NodeID identifies a sheep. It is stable across restarts (it is derived
// from the node's listen address when the node is first created) and is
// also the node's raft id, so it is never 0.
type NodeID uint64

// NodeInfo is one member of an epoch's node list.
type NodeInfo struct {
	ID          NodeID
	Addr        string // peer address host:port; its bytes place the node on the ring, as in Sheepdog
	NBDAddr     string // NBD front end, if any (for display)
	Zone        uint32 // replicas of an object go to distinct zones
	VNodes      uint16 // virtual nodes on the ring; 0 for a gateway-only node
	Incarnation uint64 // bumped at every restart: a restarted node is a new member
	Capacity    uint64 // bytes, for vnode weighting and display
}

// nidHash is the ring seed of a node: Sheepdog hashes the 16-byte address
// (IPv4 as IPv4-mapped IPv6) followed by the port in host byte order.
func nidHash(addr string) uint64 {
	var nid [18]byte
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		a := ap.Addr().As16()
		copy(nid[:16], a[:])
		binary.LittleEndian.PutUint16(nid[16:], ap.Port())
		return sdHash(nid[:])
	}
	return sdHash([]byte(addr))
}

type vnode struct {
	hash uint64
	id   NodeID
	zone uint32
}

// cmpVnode orders the ring: by hash, ties by node id.
func cmpVnode(a, b vnode) int {
	if c := cmpU64(a.hash, b.hash); c != 0 {
		return c
	}
	return cmpU64(uint64(a.id), uint64(b.id))
}

// Ring is the consistent-hash placement of one epoch's node list. It is a
// pure function of the list: every node computes the same ring. A ring is
// never modified once built, so nodes may share one (RingCache).
type Ring struct {
	nodes  []NodeInfo
	vnodes []vnode
	zones  int
}

// NewRing builds the ring for nodes (any order; it is sorted by id).
func NewRing(nodes []NodeInfo) *Ring { return nextRing(nil, nodes) }

// nextRing builds the ring for nodes from prev, the ring of an earlier
// list: the vnodes of the members both lists place alike are taken over
// in order, and only those of the members that came, left or changed are
// hashed and sorted, so an epoch change costs a merge, not a sort of
// every vnode. The result is the same as NewRing's.
func nextRing(prev *Ring, nodes []NodeInfo) *Ring {
	r := &Ring{nodes: slices.Clone(nodes)}
	byID := func(a, b NodeInfo) int { return cmpU64(uint64(a.ID), uint64(b.ID)) }
	if !slices.IsSortedFunc(r.nodes, byID) {
		slices.SortFunc(r.nodes, byID)
	}
	total := 0
	zones := map[uint32]struct{}{}
	for _, n := range r.nodes {
		total += int(n.VNodes)
		if n.VNodes > 0 {
			zones[n.Zone] = struct{}{}
		}
	}
	r.zones = len(zones)
	if total == 0 {
		return r
	}
	// The members of prev that are gone or placed differently now, and
	// the nodes whose vnodes are new (both lists are sorted by id).
	var gone []NodeID
	var added []NodeInfo
	if prev == nil || len(prev.vnodes) == 0 {
		added = r.nodes
	} else {
		i, j := 0, 0
		for i < len(prev.nodes) || j < len(r.nodes) {
			switch {
			case j == len(r.nodes) || i < len(prev.nodes) && prev.nodes[i].ID < r.nodes[j].ID:
				gone = append(gone, prev.nodes[i].ID)
				i++
			case i == len(prev.nodes) || r.nodes[j].ID < prev.nodes[i].ID:
				added = append(added, r.nodes[j])
				j++
			default:
				a, b := prev.nodes[i], r.nodes[j]
				if a.Addr != b.Addr || a.VNodes != b.VNodes || a.Zone != b.Zone {
					gone = append(gone, a.ID)
					added = append(added, b)
				}
				i++
				j++
			}
		}
		if len(added) > len(r.nodes)/2 {
			gone, added = nil, r.nodes // mostly new: build from scratch
			prev = nil
		}
	}
	fresh := make([]vnode, 0, total)
	for _, n := range added {
		if n.VNodes == 0 {
			continue
		}
		h := nidHash(n.Addr)
		for v := 0; v < int(n.VNodes); v++ {
			h = sdHashNext(h)
			fresh = append(fresh, vnode{hash: h, id: n.ID, zone: n.Zone})
		}
	}
	slices.SortFunc(fresh, cmpVnode)
	if prev == nil {
		r.vnodes = fresh
		return r
	}
	var goneSet map[NodeID]struct{}
	if len(gone) > 4 {
		goneSet = make(map[NodeID]struct{}, len(gone))
		for _, id := range gone {
			goneSet[id] = struct{}{}
		}
	}
	out := make([]vnode, 0, total)
	k := 0
	for _, v := range prev.vnodes {
		if len(gone) > 0 {
			if goneSet != nil {
				if _, ok := goneSet[v.id]; ok {
					continue
				}
			} else if slices.Contains(gone, v.id) {
				continue
			}
		}
		for k < len(fresh) && cmpVnode(fresh[k], v) < 0 {
			out = append(out, fresh[k])
			k++
		}
		out = append(out, v)
	}
	r.vnodes = append(out, fresh[k:]...)
	return r
}

// RingCache lets the nodes of one process share their rings: every node
// of a cluster builds the same ring for the same epoch, and the simulator
// runs hundreds of nodes, which go through the same epochs one after
// another (a follower applies a batch of joins some ticks after the
// leader). It keeps the rings of recent epochs, up to ringCacheVNodes
// vnodes in all; a ring is taken from it only for a node list equal to
// the one it was built for, so a node sees exactly the ring it would
// have built itself. Not safe for concurrent use: give each goroutine
// (each simulated cluster) its own.
type RingCache struct {
	byEpoch map[uint32][]*Ring
	order   []uint32 // epochs in the order their rings were added (one entry per ring)
	vnodes  int      // in all cached rings
	last    *Ring    // the ring built last
}

const ringCacheVNodes = 4 << 20

// NewRingCache returns an empty cache.
func NewRingCache() *RingCache { return &RingCache{byEpoch: map[uint32][]*Ring{}} }

// ring returns the ring for nodes (sorted by id, as a ClusterState's) of
// epoch, built from prev (this node's current ring) when none is cached.
func (c *RingCache) ring(prev *Ring, epoch uint32, nodes []NodeInfo) *Ring {
	if c == nil {
		return nextRing(prev, nodes)
	}
	for _, r := range c.byEpoch[epoch] {
		if slices.Equal(r.nodes, nodes) {
			return r
		}
	}
	if c.last != nil {
		prev = c.last // the ring of the epoch most likely just before this one
	}
	r := nextRing(prev, nodes)
	c.last = r
	c.byEpoch[epoch] = append(c.byEpoch[epoch], r)
	c.order = append(c.order, epoch)
	c.vnodes += len(r.vnodes)
	for c.vnodes > ringCacheVNodes && len(c.order) > 1 {
		e := c.order[0]
		c.order = c.order[1:]
		rs := c.byEpoch[e]
		c.vnodes -= len(rs[0].vnodes)
		if len(rs) == 1 {
			delete(c.byEpoch, e)
		} else {
			c.byEpoch[e] = rs[1:]
		}
	}
	return r
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Nodes returns the ring's nodes sorted by id. Callers must not modify it.
func (r *Ring) Nodes() []NodeInfo { return r.nodes }

// Zones is the number of distinct zones among data nodes.
func (r *Ring) Zones() int { return r.zones }

// EffectiveCopies is min(copies, zones): replicas never share a zone.
func (r *Ring) EffectiveCopies(copies int) int {
	return min(copies, r.zones)
}

// Place appends to dst the ids of the nodes holding oid, primary first:
// the first vnode at or after the object's hash, then clockwise the next
// vnodes whose zones are not used yet (Sheepdog's oid_to_vnodes).
func (r *Ring) Place(dst []NodeID, oid OID, copies int) []NodeID {
	n := r.EffectiveCopies(copies)
	if n == 0 {
		return dst
	}
	h := HashOID(oid)
	pos, _ := slices.BinarySearchFunc(r.vnodes, h, func(v vnode, h uint64) int { return cmpU64(v.hash, h) })
	if pos == len(r.vnodes) {
		pos = 0
	}
	return r.placeFrom(dst, pos, copies)
}

// placeFrom walks the ring from vnode pos.
func (r *Ring) placeFrom(dst []NodeID, pos int, copies int) []NodeID {
	n := r.EffectiveCopies(copies)
	start := len(dst)
	var zoneBuf [16]uint32
	zones := zoneBuf[:0]
	for i := 0; i < len(r.vnodes) && len(dst)-start < n; i++ {
		v := r.vnodes[(pos+i)%len(r.vnodes)]
		if slices.Contains(zones, v.zone) {
			continue
		}
		zones = append(zones, v.zone)
		dst = append(dst, v.id)
	}
	return dst
}

// Contains reports whether oid is placed on id.
func (r *Ring) Contains(oid OID, copies int, id NodeID) bool {
	var buf [16]NodeID
	return slices.Contains(r.Place(buf[:0], oid, copies), id)
}
