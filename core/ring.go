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
	node int // index into Ring.nodes
}

// Ring is the consistent-hash placement of one epoch's node list. It is a
// pure function of the list: every node computes the same ring.
type Ring struct {
	nodes  []NodeInfo
	vnodes []vnode
	zones  int
}

// NewRing builds the ring for nodes (any order; it is sorted by id).
func NewRing(nodes []NodeInfo) *Ring {
	r := &Ring{nodes: slices.Clone(nodes)}
	slices.SortFunc(r.nodes, func(a, b NodeInfo) int { return cmpU64(uint64(a.ID), uint64(b.ID)) })
	total := 0
	for _, n := range r.nodes {
		total += int(n.VNodes)
	}
	r.vnodes = make([]vnode, 0, total)
	zones := map[uint32]struct{}{}
	for i, n := range r.nodes {
		if n.VNodes == 0 {
			continue
		}
		zones[n.Zone] = struct{}{}
		h := nidHash(n.Addr)
		for v := 0; v < int(n.VNodes); v++ {
			h = sdHashNext(h)
			r.vnodes = append(r.vnodes, vnode{hash: h, node: i})
		}
	}
	slices.SortFunc(r.vnodes, func(a, b vnode) int {
		if c := cmpU64(a.hash, b.hash); c != 0 {
			return c
		}
		return cmpU64(uint64(r.nodes[a.node].ID), uint64(r.nodes[b.node].ID))
	})
	r.zones = len(zones)
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
		z := r.nodes[v.node].Zone
		if slices.Contains(zones, z) {
			continue
		}
		zones = append(zones, z)
		dst = append(dst, r.nodes[v.node].ID)
	}
	return dst
}

// Contains reports whether oid is placed on id.
func (r *Ring) Contains(oid OID, copies int, id NodeID) bool {
	var buf [16]NodeID
	return slices.Contains(r.Place(buf[:0], oid, copies), id)
}
