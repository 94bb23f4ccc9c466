package core

import (
	"fmt"
	"slices"
)

// A barrier fences the writes of one VDI. It asks every member of the
// current epoch to answer once it has applied the cluster log up to an
// index (a snapshot, a delete, an attach) and no write to the VDI's
// objects is running or queued at it as their primary. From then on no
// write that entry made stale lands anywhere: every node refuses it
// (writeFence), and the ones accepted before have settled. Each member
// also lists the VDI's objects it holds; their union is every object the
// VDI has, since a member answers only once it recovered them (the
// builder resolves a new table with it, reclaim finds what to delete).
//
// The listing is a second round, asked once every member has answered
// the first: a member answers once no write runs at it as the objects'
// primary (or as an attacher writing directly), but another member may
// have answered before, while a write that failed was still being rolled
// back on its copy, and listed that write's version or an object the
// write created, which no copy keeps once it is rolled back. After the
// first round nothing runs or can start, so the second round's lists are
// what the copies stay.
//
// Answers must all come from one epoch, so an epoch change starts the
// barrier over with the new members.

type barrier struct {
	id      uint64
	vid     uint32
	sync    bool // members make their completed writes durable before they answer
	index   uint64
	epoch   uint32
	left    map[NodeID]bool
	listing bool // the second round: every member is past the fence
	objs    []ObjVersion
	held    []ObjVersion // the copies the objects' replicas of the epoch hold
	done    func(objs, held []ObjVersion)
}

func (b *barrier) String() string {
	return fmt.Sprintf("barrier %06x@%d e%d waiting for %d", b.vid, b.index, b.epoch, len(b.left))
}

// runBarrier fences vid at log index index; done gets the union of the
// members' objects of vid, sorted, each with the newest version a member
// holds, and the copies that the objects' replicas in the barrier's
// epoch listed (sorted, each distinct object and version once: a build
// needs them, build.go). With sync every member also makes its completed
// writes durable first: a snapshot is durable once taken.
func (n *Node) runBarrier(vid uint32, index uint64, sync bool, done func(objs, held []ObjVersion)) {
	b := &barrier{id: n.newID(), vid: vid, index: index, sync: sync, done: done}
	n.barriers[b.id] = b
	n.startBarrier(b)
}

func (n *Node) startBarrier(b *barrier) {
	if n.barriers[b.id] != b {
		return
	}
	if !n.serving {
		n.after(int64(n.t.RetryTicks), func() { n.startBarrier(b) })
		return
	}
	b.epoch, b.listing = n.epoch, false
	n.barrierRound(b)
}

// barrierRound asks every member of b's epoch.
func (n *Node) barrierRound(b *barrier) {
	b.objs, b.held = nil, nil
	b.left = map[NodeID]bool{}
	for _, m := range n.cs.Nodes {
		b.left[m.ID] = true
	}
	for _, m := range n.cs.Nodes {
		n.askBarrier(b, m.ID)
	}
}

func (n *Node) askBarrier(b *barrier, to NodeID) {
	epoch := b.epoch
	current := func() bool { return n.barriers[b.id] == b && b.epoch == epoch && n.epoch == epoch && b.left[to] }
	m := &Message{Type: MsgBarrier, To: to, OID: InodeOID(b.vid), Version: b.index}
	if b.sync && b.listing {
		m.Flags |= FlagFUA // once: the second round comes after every write
	}
	n.rpc(m, func(resp *Message) {
		if !current() {
			return // an epoch change starts it over
		}
		if resp.Code != OK || resp.Epoch != epoch {
			n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
				if current() {
					n.askBarrier(b, to)
				}
			})
			return
		}
		delete(b.left, to)
		b.objs = append(b.objs, resp.Objects...)
		for _, o := range resp.Objects {
			if slices.Contains(n.placement(o.OID), to) {
				b.held = append(b.held, o)
			}
		}
		if len(b.left) == 0 {
			if !b.listing {
				b.listing = true
				n.barrierRound(b)
				return
			}
			delete(n.barriers, b.id)
			b.done(newestVersions(b.objs), distinctVersions(b.held))
		}
	})
}

// restartBarriers starts every barrier over in the new epoch.
func (n *Node) restartBarriers() {
	ids := make([]uint64, 0, len(n.barriers))
	for id := range n.barriers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		n.startBarrier(n.barriers[id])
	}
}

// handleBarrier answers a barrier once this node is past it.
func (n *Node) handleBarrier(m *Message) {
	if !n.epochGate(m, MsgBarrierResp) {
		return
	}
	vid := m.OID.VID()
	if n.applied < m.Version || n.oldWrites > 0 || !n.settled(vid) {
		epoch := n.epoch
		n.after(1, func() {
			if n.epoch == epoch {
				n.handleBarrier(m)
			}
		})
		return
	}
	var objs []ObjVersion
	for _, oid := range n.localObjects() {
		// A copy this node owes (older than a co-replica's: refill.go)
		// is not one to seal or to take a version from.
		if o := n.objs[oid]; oid.VID() == vid && (oid.IsData() || oid.IsTable()) && n.validCopy(oid, o.meta) && !n.owes(oid) {
			objs = append(objs, ObjVersion{OID: oid, Version: o.meta.Version, Deleted: o.meta.Deleted})
		}
	}
	if m.Flags&FlagFUA == 0 {
		n.respond(m, MsgBarrierResp, OK).Objects = objs
		return
	}
	n.disk(DiskOp{Kind: DiskSync}, func(d DiskDone) { n.respond(m, MsgBarrierResp, d.Err).Objects = objs })
}

// newestVersions sorts objs by id and keeps each object's newest version.
func newestVersions(objs []ObjVersion) []ObjVersion {
	slices.SortFunc(objs, func(a, b ObjVersion) int {
		if a.OID != b.OID {
			return cmpU64(uint64(a.OID), uint64(b.OID))
		}
		return cmpU64(b.Version, a.Version)
	})
	return slices.CompactFunc(objs, func(a, b ObjVersion) bool { return a.OID == b.OID })
}

// distinctVersions sorts objs by id, newest version first, and keeps each
// (object, version) pair once.
func distinctVersions(objs []ObjVersion) []ObjVersion {
	slices.SortFunc(objs, func(a, b ObjVersion) int {
		if a.OID != b.OID {
			return cmpU64(uint64(a.OID), uint64(b.OID))
		}
		return cmpU64(b.Version, a.Version)
	})
	return slices.CompactFunc(objs, func(a, b ObjVersion) bool { return a.OID == b.OID && a.Version == b.Version })
}

// settled reports whether this node has recovered every object of vid it
// holds in this epoch and runs or queues no write on any as its primary.
func (n *Node) settled(vid uint32) bool {
	r := n.rec
	if r == nil || r.epoch != n.epoch || !r.listsDone {
		return false
	}
	for oid := range r.want {
		if oid.VID() == vid {
			return false
		}
	}
	for oid, o := range n.objs {
		if oid.VID() != vid {
			continue
		}
		if o.active != nil {
			return false
		}
		for _, p := range o.queue {
			if p.m.Op != OpRead && p.m.Op != OpStat {
				return false
			}
		}
	}
	return true
}
