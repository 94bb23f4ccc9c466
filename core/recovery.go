package core

import (
	"fmt"
	"slices"
)

// Recovery after an epoch change. Every serving member asks every other
// member which objects placed on it they hold and at which versions; a
// member answers only once it is in the epoch itself (so the old epoch's
// writes are frozen), has no old-epoch disk write in flight, and every
// read lease it granted has ended. The newest version of each object is
// then fetched from a holder. Because every live member answers, the
// newest version survives as long as one live member holds it.
//
// Until an object is recovered, the node neither serves nor applies I/O
// on it; such I/O moves the object to the front of the queue.

// candidate is one version of an object and the members holding it.
type candidate struct {
	version uint64
	holders []NodeID
	older   *candidate // the next lower version, if the newest proves unreadable
}

type recovery struct {
	epoch     uint32
	lists     map[NodeID]bool // members whose lists are still awaited
	cands     map[OID]*candidate
	listsDone bool
	want      map[OID]*candidate // still to fetch
	order     []OID              // fetch order (sorted), consumed from next
	next      int
	prio      []OID
	inflight  map[OID]bool
	waiters   map[OID][]func()
	total     int
	finished  bool
	diverged  map[OID][]NodeID // objects this primary is ahead on: replicas to catch up before it serves reads (diverged.go)
}

// RecoveryStatus reports recovery progress for status displays.
type RecoveryStatus struct {
	Epoch     uint32
	Listing   bool // still collecting object lists
	Total     int  // objects to fetch in this epoch
	Remaining int
	Finished  bool
	AllDone   bool // every member finished this epoch
}

// Recovery returns the node's recovery progress.
func (n *Node) Recovery() RecoveryStatus {
	r := n.rec
	if r == nil {
		return RecoveryStatus{Epoch: n.epoch}
	}
	return RecoveryStatus{Epoch: r.epoch, Listing: !r.listsDone, Total: r.total, Remaining: len(r.want),
		Finished: r.finished, AllDone: r.finished && n.allDone()}
}

// objectReady reports whether this node may do I/O on oid in the current
// epoch.
func (n *Node) objectReady(oid OID) bool {
	if n.bugs.SkipRecovery {
		return true
	}
	r := n.rec
	if r == nil || r.epoch != n.epoch {
		return false
	}
	if !r.listsDone {
		return false
	}
	_, pending := r.want[oid]
	return !pending
}

// whenReady runs fn once oid is recovered in the current epoch (or the
// epoch changes, in which case fn re-checks and answers accordingly).
func (n *Node) whenReady(oid OID, fn func()) {
	r := n.rec
	if r == nil {
		// Not serving: fn will refuse the request itself after the next
		// epoch change releases it.
		n.after(int64(n.t.RetryTicks), fn)
		return
	}
	r.waiters[oid] = append(r.waiters[oid], fn)
	if r.listsDone && r.want[oid] != nil && !slices.Contains(r.prio, oid) {
		r.prio = append(r.prio, oid)
		n.pumpRecovery()
	}
}

func (n *Node) startRecovery() {
	r := &recovery{
		epoch:    n.epoch,
		lists:    map[NodeID]bool{},
		cands:    map[OID]*candidate{},
		want:     map[OID]*candidate{},
		inflight: map[OID]bool{},
		waiters:  map[OID][]func(){},
	}
	n.rec = r
	for _, m := range n.cs.Nodes {
		if m.ID != n.id {
			r.lists[m.ID] = true
		}
	}
	if n.bugs.SkipRecovery {
		// The planted bug: serve at once, fetch nothing.
		r.lists = map[NodeID]bool{}
	}
	if len(r.lists) > 0 {
		n.listsDue = r // asked for at the next Ready (sendLists)
	}
	n.maybeListsDone(r)
}

// sendLists asks every member for its list, for the recovery the last
// epoch change started, unless a newer epoch ended it meanwhile. The
// requests wait for the end of the batch of events the epoch change came
// in: a node that applies a burst of epochs at once (the joins of a
// restarted cluster, a hundred joins committed together) would otherwise
// ask every member once per epoch, and with n members n³ requests went
// out, all but the last round's answered "stale epoch" or ignored.
func (n *Node) sendLists() {
	r := n.listsDue
	n.listsDue = nil
	if r == nil || n.rec != r {
		return
	}
	for _, m := range n.cs.Nodes {
		if r.lists[m.ID] {
			n.requestList(r, m.ID)
		}
	}
}

func (n *Node) requestList(r *recovery, from NodeID) {
	n.rpc(&Message{Type: MsgListReq, To: from}, func(resp *Message) {
		if n.rec != r || !r.lists[from] {
			return
		}
		if resp.Code != OK {
			// Not there yet (older epoch, restarted, ...): ask again.
			n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
				if n.rec == r && r.lists[from] {
					n.requestList(r, from)
				}
			})
			return
		}
		delete(r.lists, from)
		for _, ov := range resp.Objects {
			r.merge(ov.OID, ov.Version, from)
		}
		n.maybeListsDone(r)
	})
}

// merge adds a holder of version v, keeping versions newest first.
func (r *recovery) merge(oid OID, v uint64, holder NodeID) {
	c := r.cands[oid]
	if c == nil || v > c.version {
		r.cands[oid] = &candidate{version: v, holders: []NodeID{holder}, older: c}
		return
	}
	for {
		if v == c.version {
			c.holders = append(c.holders, holder)
			return
		}
		if c.older == nil || v > c.older.version {
			c.older = &candidate{version: v, holders: []NodeID{holder}, older: c.older}
			return
		}
		c = c.older
	}
}

func (n *Node) maybeListsDone(r *recovery) {
	if len(r.lists) > 0 || r.listsDone {
		return
	}
	r.listsDone = true
	oids := make([]OID, 0, len(r.cands))
	for oid := range r.cands {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	for _, oid := range oids {
		c := r.cands[oid]
		if n.copiesOf(oid) == 0 {
			continue
		}
		if o := n.objs[oid]; o != nil && o.present && o.meta.Version >= c.version {
			continue
		}
		for x := c; x != nil; x = x.older {
			slices.Sort(x.holders)
		}
		r.want[oid] = c
		r.order = append(r.order, oid)
	}
	n.noteDiverged(r)
	r.cands = nil
	r.total = len(r.order)
	// Work that waited for the lists may be ready now.
	for _, oid := range sortedKeys(r.waiters) {
		if r.want[oid] == nil {
			n.runWaiters(r, oid)
		} else {
			r.prio = append(r.prio, oid)
		}
	}
	n.pumpRecovery()
}

func sortedKeys[V any](m map[OID]V) []OID {
	out := make([]OID, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (n *Node) runWaiters(r *recovery, oid OID) {
	ws := r.waiters[oid]
	delete(r.waiters, oid)
	for _, fn := range ws {
		fn()
	}
}

// pumpRecovery starts fetches up to the parallelism limit, prioritized
// objects first.
func (n *Node) pumpRecovery() {
	r := n.rec
	if r == nil || !r.listsDone {
		return
	}
	for len(r.inflight) < n.t.RecoveryParallel {
		var oid OID
		found := false
		for len(r.prio) > 0 && !found {
			oid, r.prio = r.prio[0], r.prio[1:]
			found = r.want[oid] != nil && !r.inflight[oid]
		}
		for !found && r.next < len(r.order) {
			oid = r.order[r.next]
			r.next++
			found = r.want[oid] != nil && !r.inflight[oid]
		}
		if !found {
			break
		}
		r.inflight[oid] = true
		n.fetch(r, oid, 0)
	}
	n.maybeFinished(r)
}

// fetch pulls oid from one of its holders, starting at a random one. A
// holder whose copy turns out corrupted or gone is dropped; when no holder
// of the newest version is left, the next version is fetched instead.
func (n *Node) fetch(r *recovery, oid OID, attempt int) {
	c := r.want[oid]
	for len(c.holders) == 0 {
		if c.older == nil || !n.newerThanLocal(oid, c.older.version) {
			delete(r.inflight, oid)
			delete(r.want, oid)
			n.note(fmt.Sprintf("node %d: no readable copy of %v newer than ours", n.id, oid))
			n.runWaiters(r, oid)
			n.pumpRecovery()
			return
		}
		c = c.older
		r.want[oid] = c
	}
	if attempt == 0 {
		attempt = n.rand.IntN(len(c.holders)) + 1
	}
	holder := c.holders[attempt%len(c.holders)]
	n.rpc(&Message{Type: MsgFetchReq, To: holder, OID: oid, Version: c.version}, func(resp *Message) {
		if n.rec != r {
			return
		}
		if resp.Code == ErrCorrupt || resp.Code == ErrNoObject {
			c.holders = slices.DeleteFunc(c.holders, func(id NodeID) bool { return id == holder })
			n.fetch(r, oid, attempt)
			return
		}
		if resp.Code != OK {
			n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
				if n.rec == r {
					n.fetch(r, oid, attempt+1)
				}
			})
			return
		}
		meta := ObjMeta{Version: resp.Version, ReqID: resp.ReqID, Deleted: resp.Flags&FlagDeleted != 0}
		n.whenIdle(oid, func() {
			if n.rec != r {
				return
			}
			// Recovered copies are made durable before the object counts
			// as recovered: old holders delete theirs once all are done.
			n.writeLocal(DiskOp{Kind: DiskPut, OID: oid, Data: resp.Data, Meta: meta, Sync: true}, func(code Code) {
				if n.rec != r {
					return
				}
				if code != OK {
					n.after(int64(n.t.RetryTicks), func() {
						if n.rec == r {
							n.fetch(r, oid, attempt+1)
						}
					})
					return
				}
				delete(r.inflight, oid)
				delete(r.want, oid)
				n.runWaiters(r, oid)
				n.pumpRecovery()
			})
		})
	})
}

func (n *Node) newerThanLocal(oid OID, v uint64) bool {
	o := n.objs[oid]
	return o == nil || !o.present || o.meta.Version < v
}

func (n *Node) maybeFinished(r *recovery) {
	if r.finished || !r.listsDone || len(r.want) > 0 {
		return
	}
	r.finished = true
	n.done[n.id] = true
	n.note(fmt.Sprintf("node %d: recovery of epoch %d finished (%d objects)", n.id, r.epoch, r.total))
	n.announceRecovered()
	if slices.Contains(n.cs.Restarted, n.id) {
		// Record that this restarted node is whole again.
		n.propose(&Cmd{Type: CmdRecovered, NodeID: n.id, Inc: n.self.Incarnation, Epoch: n.epoch}, func(Result) {})
	}
	n.maybeGC()
}

// announceRecovered tells the members this node recovered the epoch. A
// node still waiting for others asks them to answer, so that a lost
// announcement is repeated.
func (n *Node) announceRecovered() {
	ask := uint32(0)
	if !n.allDone() {
		ask = 1
	}
	for _, m := range n.cs.Nodes {
		if m.ID != n.id {
			n.send(&Message{Type: MsgRecovered, To: m.ID, Flags: ask})
		}
	}
}

func (n *Node) handleRecovered(m *Message) {
	if m.Epoch != n.epoch {
		return
	}
	if _, ok := n.cs.Member(m.From); ok {
		n.done[m.From] = true
		n.caughtUp(m.From, 0)
		if m.Flags&1 != 0 && n.rec != nil && n.rec.finished {
			n.send(&Message{Type: MsgRecovered, To: m.From})
		}
		n.maybeGC()
	}
}

func (n *Node) allDone() bool {
	for _, m := range n.cs.Nodes {
		if !n.done[m.ID] {
			return false
		}
	}
	return true
}

// maybeGC deletes the objects this node no longer holds once every
// member has recovered the current epoch.
func (n *Node) maybeGC() {
	if n.gced || n.rec == nil || !n.rec.finished || !n.allDone() {
		return
	}
	n.gced = true
	if len(n.cs.Removed) > 0 || len(n.cs.Restarted) > 0 {
		// Every member recovered this epoch: any node that sees it records
		// the stable point, so that it survives the leader.
		n.propose(&Cmd{Type: CmdStable, Epoch: n.epoch}, func(Result) {})
	}
	n.collect()
}

// collect deletes local objects this epoch does not place here; busy ones
// are retried on later ticks.
func (n *Node) collect() {
	n.gcLeft = false
	var buf []NodeID
	for _, oid := range n.localObjects() {
		c := n.copiesOf(oid)
		if c > 0 && n.validCopy(oid, n.objs[oid].meta) {
			buf = n.ring.Place(buf[:0], oid, c)
			if slices.Contains(buf, n.id) {
				continue
			}
		}
		if o := n.objs[oid]; o.idle() {
			n.deleteLocal(oid)
		} else {
			n.gcLeft = true
		}
	}
}

func (n *Node) tickRecovery() {
	if n.rec == nil || !n.rec.finished || n.now%int64(n.t.RecoveredTicks) != 0 {
		return
	}
	if !n.allDone() {
		n.announceRecovered()
	}
	if n.gced && n.gcLeft {
		n.collect()
	}
}

// handleList answers a recovering member with the objects placed on it
// that this node holds.
func (n *Node) handleList(m *Message) {
	if !n.epochGate(m, MsgListResp) {
		return
	}
	if n.now < n.listBlockedTill || n.oldWrites > 0 {
		n.hold(m)
		return
	}
	var objs []ObjVersion
	for _, oid := range n.listIndex()[m.From] {
		if o := n.objs[oid]; n.validCopy(oid, o.meta) {
			objs = append(objs, ObjVersion{OID: oid, Version: o.meta.Version, Deleted: o.meta.Deleted})
		}
	}
	r := n.respond(m, MsgListResp, OK)
	r.Objects = objs
}

// listIdx is the local objects that have copies, sorted, by each node the
// ring places them on, as of the ring, cluster state, applied entry and
// set of present objects it was built for (copies come from the cluster
// state; versions, which change without that, are read when answering).
type listIdx struct {
	ring    *Ring
	cs      *ClusterState
	applied uint64
	objGen  uint64
	byNode  map[NodeID][]OID
}

// listIndex returns the local objects placed on each node. Every member
// asks every other for its list at each epoch change: placing every local
// object again for each request cost a node O(members × objects) per
// epoch, where one pass serves them all.
func (n *Node) listIndex() map[NodeID][]OID {
	x := &n.listIdx
	if x.byNode != nil && x.ring == n.ring && x.cs == n.cs && x.applied == n.applied && x.objGen == n.objGen {
		return x.byNode
	}
	*x = listIdx{ring: n.ring, cs: n.cs, applied: n.applied, objGen: n.objGen, byNode: map[NodeID][]OID{}}
	var buf []NodeID
	for _, oid := range n.localObjects() {
		c := n.copiesOf(oid)
		if c == 0 {
			continue
		}
		for _, id := range n.ring.Place(buf[:0], oid, c) {
			x.byNode[id] = append(x.byNode[id], oid)
		}
	}
	return x.byNode
}
