package core

import (
	"fmt"
	"slices"
)

// Reclaim frees what deleted VDIs leave. An object of a deleted VDI D is
// referenced only through the tables of D's live relatives (tables are
// resolved when a VDI is made, so references never go through another
// VDI), all in D's family. A pass over a family
//
//  1. fences every deleted VDI of the family and lists its objects
//     (barriers: nothing writes them any more);
//  2. reads the table of every live VDI of the family and collects the
//     indices that still name a deleted one;
//  3. checks in the cluster log that the family did not change meanwhile
//     (CmdReclaim with the family's generation): a VDI made from another
//     copies its references, and one made during the pass was not read;
//  4. purges each deleted VDI nothing references (CmdPurge: every node
//     drops its objects, and its id is never reused), and deletes on
//     every member the other objects of deleted VDIs nothing references.
//
// References only ever disappear (a table entry changes from a VDI's id
// to 0, never back), so what step 2 found unreferenced stays so: no
// object is freed while anything references it. A table write not yet
// durable would come back as it was after a power loss, so step 2 ends
// by syncing the replicas of every table object it read. Deletion leaves
// no tombstone: a node that was away may bring an unreferenced object back
// when it returns, and a later pass deletes it again. Passes repeat
// while deleted VDIs remain, whenever the family, the epoch or the set
// of deleted VDIs changed, and at least every reclaimTicks.

const reclaimTicks = 1000

type reclaimPhase uint8

const (
	reclaimListing  reclaimPhase = iota + 1 // fencing and listing the deleted VDIs
	reclaimReading                          // reading the live VDIs' tables
	reclaimChecking                         // proposing CmdReclaim
	reclaimRemoving                         // purging and deleting
)

func (p reclaimPhase) String() string {
	return [...]string{"?", "listing", "reading", "checking", "removing"}[min(int(p), 4)]
}

// cleanMark records a pass that found nothing to do.
type cleanMark struct {
	gen   uint64
	epoch uint32
	dead  int
	at    int64
}

type reclaimPass struct {
	root  uint32
	gen   uint64
	phase reclaimPhase
	dead  []uint32
	lists map[uint32][]ObjVersion
	refs  map[uint32]map[uint32]bool // deleted VDI → indices still referenced
	live  []uint32
	read  []OID // table objects read: their replicas sync before the check
	left  int
	acted bool // purged or deleted something
}

func (p *reclaimPass) String() string {
	return fmt.Sprintf("reclaim family %06x: %v, %d deleted, %d left", p.root, p.phase, len(p.dead), p.left)
}

// maybeReclaim starts a pass over the family rooted at root if one is due.
func (n *Node) maybeReclaim(root uint32) {
	if n.jobs.reclaims[root] != nil {
		return
	}
	var dead, live []uint32
	for _, v := range n.cs.Records() {
		if v.Root != root {
			continue
		}
		if v.Building {
			return // its table will copy references: wait for it
		}
		if v.Deleted {
			dead = append(dead, v.ID)
		} else if v.Table && !(n.bugs.ReclaimShared && v.Clone) {
			live = append(live, v.ID)
		}
	}
	if len(dead) == 0 {
		delete(n.jobs.clean, root)
		return
	}
	gen := n.cs.FamilyGen(root)
	if c, ok := n.jobs.clean[root]; ok && c.gen == gen && c.epoch == n.epoch && c.dead == len(dead) && n.now-c.at < reclaimTicks {
		return
	}
	p := &reclaimPass{root: root, gen: gen, phase: reclaimListing, dead: dead, live: live,
		lists: map[uint32][]ObjVersion{}, refs: map[uint32]map[uint32]bool{}, left: len(dead)}
	n.jobs.reclaims[root] = p
	for _, d := range dead {
		p.refs[d] = map[uint32]bool{}
		n.runBarrier(d, n.applied, false, func(objs, _ []ObjVersion) {
			if !n.reclaimCurrent(p) {
				return
			}
			p.lists[d] = objs
			if p.left--; p.left == 0 {
				n.reclaimRead(p)
			}
		})
	}
}

func (n *Node) reclaimCurrent(p *reclaimPass) bool {
	return n.jobs.reclaims[p.root] == p && n.isLeader
}

func (n *Node) reclaimEnd(p *reclaimPass) {
	if n.jobs.reclaims[p.root] != p {
		return
	}
	delete(n.jobs.reclaims, p.root)
	if !p.acted {
		n.jobs.clean[p.root] = cleanMark{gen: p.gen, epoch: n.epoch, dead: len(p.dead), at: n.now}
	}
}

func (n *Node) reclaimRead(p *reclaimPass) {
	p.phase = reclaimReading
	p.left = len(p.live)
	if p.left == 0 {
		n.reclaimCheck(p)
		return
	}
	tableDone := func() {
		if p.left--; p.left == 0 {
			n.reclaimSync(p)
		}
	}
	for _, vid := range p.live {
		v := n.cs.VDI(vid)
		if v == nil || v.Deleted || !v.Table {
			// Deleted or flattened since: it references nothing now.
			tableDone()
			continue
		}
		n.readTable(v, func(code Code, entries []uint32) {
			if !n.reclaimCurrent(p) {
				return
			}
			if code != OK {
				// Deleted or flattened meanwhile: it references nothing. (An
				// error that is not ErrNoVDI does not reach here: reads are
				// retried.)
				entries = nil
			}
			for i, e := range entries {
				if refs := p.refs[e]; refs != nil {
					refs[uint32(i)] = true
				}
			}
			for k := uint32(0); k < tableChunks(v.Objects()); k++ {
				p.read = append(p.read, TableOID(vid, k))
			}
			tableDone()
		})
	}
}

// reclaimSync makes the tables read durable before they count: an entry
// read as 0 may be a copy-on-write's table write that no flush made
// durable yet, and after a power loss it would name the deleted VDI
// again, purged meanwhile (seed 62344 of --nodes 3 --copies 2
// --heartbeat 2: a clone unreadable).
func (n *Node) reclaimSync(p *reclaimPass) {
	n.syncReplicas(p.read, func() bool { return n.reclaimCurrent(p) }, func(ok bool) {
		if !ok {
			p.acted = true // the epoch changed: look again with the new replicas
			n.reclaimEnd(p)
			return
		}
		n.reclaimCheck(p)
	})
}

// syncReplicas makes every replica of oids sync its disk, retrying while
// current holds, then runs done(true); done(false) if the epoch changed
// first (the replicas are others now).
func (n *Node) syncReplicas(oids []OID, current func() bool, done func(bool)) {
	epoch := n.epoch
	byNode := map[NodeID][]OID{}
	for _, oid := range oids {
		for _, id := range n.placement(oid) {
			byNode[id] = append(byNode[id], oid)
		}
	}
	ids := make([]NodeID, 0, len(byNode))
	for id := range byNode {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	left := len(ids)
	if left == 0 {
		done(true)
		return
	}
	failed := false
	var ask func(id NodeID)
	ask = func(id NodeID) {
		n.rpc(&Message{Type: MsgSync, To: id, OIDs: byNode[id]}, func(resp *Message) {
			if !current() || failed {
				return
			}
			if n.epoch != epoch {
				failed = true
				done(false)
				return
			}
			if resp.Code != OK {
				n.after(int64(max(n.t.RetryTicks/4, 1)), func() {
					if current() && !failed {
						ask(id)
					}
				})
				return
			}
			if left--; left == 0 {
				done(true)
			}
		})
	}
	for _, id := range ids {
		ask(id)
	}
}

func (n *Node) reclaimCheck(p *reclaimPass) {
	p.phase = reclaimChecking
	n.propose(&Cmd{Type: CmdReclaim, VID: p.root, Gen: p.gen}, func(res Result) {
		if !n.reclaimCurrent(p) {
			return
		}
		if res.Code != OK {
			p.acted = true // the family changed: look again at once
			n.reclaimEnd(p)
			return
		}
		n.reclaimRemove(p)
	})
}

func (n *Node) reclaimRemove(p *reclaimPass) {
	p.phase = reclaimRemoving
	var garbage []OID
	for _, d := range p.dead {
		if len(p.refs[d]) == 0 {
			p.acted = true
			p.left++
			n.propose(&Cmd{Type: CmdPurge, VID: d, Gen: p.gen}, func(Result) {
				if p.left--; p.left == 0 {
					n.reclaimEnd(p)
				}
			})
			continue
		}
		for _, o := range p.lists[d] {
			if !o.OID.IsData() || !p.refs[d][o.OID.Index()] {
				garbage = append(garbage, o.OID)
			}
		}
	}
	if len(garbage) > 0 {
		p.acted = true
		slices.Sort(garbage)
		for _, m := range n.cs.Nodes {
			p.left++
			n.rpc(&Message{Type: MsgReclaim, To: m.ID, OIDs: garbage}, func(*Message) {
				if p.left--; p.left == 0 {
					n.reclaimEnd(p)
				}
			})
		}
	}
	if p.left == 0 {
		n.reclaimEnd(p)
	}
}

// handleReclaim deletes the listed objects of deleted VDIs held here.
func (n *Node) handleReclaim(m *Message) {
	if !n.epochGate(m, MsgReclaimResp) {
		return
	}
	for _, oid := range m.OIDs {
		v := n.cs.VDI(oid.VID())
		// The build's barrier had every member apply the snapshot first;
		// the seal may not be applied here yet.
		orphan := m.Flags&FlagOrphans != 0 && v != nil && v.IsSnapshot() && oid.IsData()
		if v != nil && !v.Deleted && !orphan {
			continue // only ever objects of deleted VDIs, or a sealed snapshot's orphans
		}
		delete(n.refill, oid) // garbage: no copy is owed any more
		if o := n.objs[oid]; o != nil && (o.present || o.catchingUp || o.diskBusy) {
			// A catch-up or write in flight may store the object after
			// this: delete it once they are done, not only if present now.
			n.whenIdle(oid, func() { n.deleteLocal(oid) })
		}
	}
	n.respond(m, MsgReclaimResp, OK)
}
