package core

import "slices"

// Read leases. A primary serves a read from its local copy only while
// every co-replica of the object has promised, for the current epoch,
// not to answer a newer epoch's recovery lists before the lease ends.
// Any write in a newer epoch needs those lists first, so no newer write
// can complete while an old primary still serves reads.
//
// The promise is measured by the grantor from its own clock and by the
// holder from when it asked, shortened by the worst tick-rate drift, so
// the holder's lease always ends before the grantor's promise.

func (n *Node) holderLeaseTicks() int64 {
	d := n.t.MaxDrift
	return int64(float64(n.t.LeaseTicks)*(1-d)/(1+d)) - 1
}

// haveLeases reports whether this node may serve reads of an object
// replicated on reps; it asks for missing leases.
func (n *Node) haveLeases(reps []NodeID) bool {
	ok := true
	for _, r := range reps {
		if r == n.id {
			continue
		}
		n.leaseUsed[r] = n.now
		if n.leases[r] > n.now {
			continue
		}
		ok = false
		n.requestLease(r)
	}
	return ok
}

func (n *Node) requestLease(r NodeID) {
	if n.leaseReq[r] {
		return
	}
	n.leaseReq[r] = true
	epoch, sent := n.epoch, n.now
	n.rpc(&Message{Type: MsgLeaseReq, To: r}, func(resp *Message) {
		if epoch != n.epoch {
			return
		}
		delete(n.leaseReq, r)
		if resp.Code == OK && resp.Epoch == epoch {
			n.leases[r] = max(n.leases[r], sent+n.holderLeaseTicks())
			n.leaseGranted()
		}
	})
}

// leaseGranted lets waiting reads run.
func (n *Node) leaseGranted() {
	oids := make([]OID, 0)
	for oid, o := range n.objs {
		if len(o.queue) > 0 && o.active == nil {
			oids = append(oids, oid)
		}
	}
	slices.Sort(oids)
	for _, oid := range oids {
		n.runPrimary(oid)
	}
}

func (n *Node) handleLeaseReq(m *Message) {
	if !n.epochGate(m, MsgLeaseGrant) {
		return
	}
	if _, ok := n.cs.Member(m.From); !ok && !(n.bugs.NoEpochCheck && m.Epoch < n.epoch) {
		n.respond(m, MsgLeaseGrant, ErrNotMember)
		return
	}
	n.grantedUntil = max(n.grantedUntil, n.now+int64(n.t.LeaseTicks))
	r := n.respond(m, MsgLeaseGrant, OK)
	if n.bugs.NoEpochCheck {
		r.Epoch = m.Epoch // the planted bug answers in the asker's epoch
	}
}

// tickLeases renews leases that reads used recently before they run out.
func (n *Node) tickLeases() {
	if !n.serving || len(n.leaseUsed) == 0 {
		return
	}
	ids := make([]NodeID, 0, len(n.leaseUsed))
	for id, used := range n.leaseUsed {
		if n.now-used > int64(2*n.t.LeaseTicks) {
			delete(n.leaseUsed, id)
			continue
		}
		if n.leases[id]-n.now < int64(n.t.LeaseTicks/2) && !n.leaseReq[id] {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if _, ok := n.cs.Member(id); ok {
			n.requestLease(id)
		}
	}
}
