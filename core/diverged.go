package core

import "slices"

// Diverged objects. A write that was in flight when its epoch ended (its
// primary crashed, or lost its replicas) may have reached some copies and
// not others. Recovery then fetches the newest version everywhere, but
// until it has, a primary holding that version is its only guard: had it
// served a read of it, and then been lost itself, the older copies left
// would win the next recovery, and a later read would go back in time.
// So a primary that recovery finds ahead of another holder of the object
// serves no read of it until every replica the epoch places it on has
// caught up: fetched it from this node, or announced that its recovery of
// the epoch is done. Only objects whose copies disagree wait; a node that
// holds no copy yet (a new or emptied one) is no reason to, since the
// versions others hold are then acknowledged ones.

// noteDiverged records, once the lists are in, the replicas of each object
// this node is the primary of that hold an older version than this node.
func (n *Node) noteDiverged(r *recovery) {
	for _, oid := range sortedKeys(r.cands) {
		c := r.cands[oid]
		o := n.objs[oid]
		if o == nil || !o.present || o.meta.Version < c.version || n.copiesOf(oid) == 0 {
			continue
		}
		var same []NodeID // holders of this node's version
		older := false
		for x := c; x != nil; x = x.older {
			switch {
			case x.version == o.meta.Version:
				same = x.holders
			case x.version < o.meta.Version:
				older = true
			}
		}
		if !older {
			continue
		}
		reps := n.placement(oid)
		if len(reps) == 0 || reps[0] != n.id {
			continue
		}
		var wait []NodeID
		for _, id := range reps[1:] {
			if !slices.Contains(same, id) && !n.done[id] {
				wait = append(wait, id)
			}
		}
		if len(wait) > 0 {
			if r.diverged == nil {
				r.diverged = map[OID][]NodeID{}
			}
			r.diverged[oid] = wait
		}
	}
}

// divergedReads reports whether reads of oid must wait for its replicas
// to catch up with this node's copy.
func (n *Node) divergedReads(oid OID) bool {
	r := n.rec
	return r != nil && r.epoch == n.epoch && len(r.diverged[oid]) > 0
}

// caughtUp records that replica id holds this node's copy of oid (it
// fetched it from here, or a write since reached it); with oid 0, every
// object (id recovered the epoch). Reads that waited run.
func (n *Node) caughtUp(id NodeID, oid OID) {
	r := n.rec
	if r == nil || r.epoch != n.epoch || len(r.diverged) == 0 {
		return
	}
	var oids []OID
	if oid != 0 {
		oids = []OID{oid}
	} else {
		oids = sortedKeys(r.diverged)
	}
	for _, x := range oids {
		w, ok := r.diverged[x]
		if !ok {
			continue
		}
		if id != 0 {
			w = slices.DeleteFunc(w, func(y NodeID) bool { return y == id })
		} else {
			w = nil
		}
		if len(w) > 0 {
			r.diverged[x] = w
			continue
		}
		delete(r.diverged, x)
		n.runPrimary(x)
	}
}
