package core

import (
	"fmt"
	"slices"
)

const maxHeld = 1 << 14

// recv dispatches a peer message.
func (n *Node) recv(m *Message) {
	if m.From != n.id {
		n.lastHeard[m.From] = n.now
		if isAnswer(m) {
			n.lastAck[m.From] = n.now
			delete(n.reach.suspect, m.From)
		}
	}
	n.dispatch(m)
}

func (n *Node) dispatch(m *Message) {
	switch m.Type {
	case MsgRaft:
		n.stepRaft(m)
	case MsgJoin:
		n.handleJoin(m)
	case MsgJoinAck:
		n.handleJoinAck(m)
	case MsgLeaseReq:
		n.handleLeaseReq(m)
	case MsgIO:
		n.handleIO(m)
	case MsgIOResp:
		n.gw.ioResp(n, m)
	case MsgRepl:
		n.handleRepl(m)
	case MsgSync:
		n.handleSync(m)
	case MsgListReq:
		n.handleList(m)
	case MsgFetchReq:
		n.handleFetch(m)
	case MsgRecovered:
		n.handleRecovered(m)
	case MsgCheckReq:
		n.handleCheck(m)
	case MsgRevoke:
		n.handleRevoke(m)
	case MsgBarrier:
		n.handleBarrier(m)
	case MsgReclaim:
		n.handleReclaim(m)
	case MsgRestamp:
		n.handleRestamp(m)
	case MsgPing:
		n.send(&Message{Type: MsgPong, To: m.From, ID: m.ID})
	case MsgUnreachable:
		n.handleUnreachable(m)
	case MsgLeaseGrant, MsgReplResp, MsgSyncResp, MsgListResp, MsgFetchResp, MsgCheckResp, MsgRevokeResp,
		MsgBarrierResp, MsgReclaimResp, MsgRestampResp:
		n.response(m)
	}
}

// epochGate decides what to do with a request tagged with an epoch:
// proceed (true), or it has already been answered or held (false).
func (n *Node) epochGate(m *Message, resp MsgType) bool {
	switch {
	case m.Epoch > n.epoch:
		n.hold(m)
		return false
	case m.Epoch < n.epoch && !n.bugs.NoEpochCheck:
		n.respond(m, resp, ErrStaleEpoch)
		return false
	case !n.serving:
		n.respond(m, resp, ErrNotMember)
		return false
	}
	return true
}

// hold keeps a message until the node can handle it (it is from a newer
// epoch, or recovery lists must wait).
func (n *Node) hold(m *Message) {
	if len(n.held) >= maxHeld {
		n.held = n.held[1:]
	}
	n.held = append(n.held, m)
}

// releaseHeld re-dispatches held messages the node may now handle.
func (n *Node) releaseHeld() {
	if len(n.held) == 0 {
		return
	}
	held := n.held
	n.held = nil
	for i, m := range held {
		if m.Epoch > n.epoch {
			n.held = append(n.held, m)
			continue
		}
		n.dispatch(m)
		_ = i
	}
}

// clusterChanged brings the node in line with the cluster state after
// the node list, epoch or format changed.
func (n *Node) clusterChanged() {
	for _, m := range n.cs.Nodes {
		n.addrs[m.ID] = m.Addr
	}
	serving := n.cs.Formatted && n.cs.IsMember(n.id, n.self.Incarnation)
	if n.cs.Epoch == n.epoch && serving == n.serving {
		return
	}
	old := n.epoch
	n.epoch = n.cs.Epoch
	n.serving = serving
	n.ring = n.cfg.Rings.ring(n.ring, n.cs.Epoch, n.cs.Nodes)
	n.oldWrites = n.writesInFlight
	n.note(fmt.Sprintf("node %d: epoch %d → %d, %d nodes, serving=%v", n.id, old, n.epoch, len(n.cs.Nodes), serving))

	// Leases of the old epoch end here; lists of the new one wait until
	// every lease this node granted has run out.
	n.listBlockedTill = max(n.listBlockedTill, n.grantedUntil)
	n.grantedUntil = 0
	clear(n.leases)
	clear(n.leaseReq)
	if n.listBlockedTill > n.now {
		n.after(n.listBlockedTill-n.now, n.releaseHeld)
	}

	n.abortPrimary()
	n.endDirect()
	n.rec = nil
	clear(n.refill) // recovery finds what is missing here
	n.failStaleCalls()
	clear(n.done)
	n.gced = false
	if n.serving {
		n.startRecovery()
	}
	n.gw.epochChanged(n)
	n.restartBarriers()
	n.releaseHeld()
}

// abortPrimary fails the operations a primary queued or started in the
// old epoch: the gateways retry them in the new one.
func (n *Node) abortPrimary() {
	oids := make([]OID, 0)
	for oid, o := range n.objs {
		if len(o.queue) > 0 || o.active != nil || len(o.replWaits) > 0 {
			oids = append(oids, oid)
		}
	}
	slices.Sort(oids)
	for _, oid := range oids {
		n.failPrimary(n.objs[oid], ErrStaleEpoch)
		n.objs[oid].replWaits = nil
	}
}

// abortUnplaced fails the operations this node queued or started as the
// primary of objects of vid that a log entry just left without a
// placement: the table objects of a VDI deleted, rolled back over or
// flattened, every object of a purged VDI. Nothing reads them again, and
// a replica that applied the entry first answers a write to one with
// ErrNotReady (no placement, as for a VDI it does not know yet), which a
// primary retries until the epoch changes: on a stable cluster the write
// never settled, and every barrier of vid (reclaim fences a deleted VDI
// with one) waited for it forever.
func (n *Node) abortUnplaced(vid uint32) {
	oids := make([]OID, 0)
	for oid, o := range n.objs {
		if oid.VID() == vid && (len(o.queue) > 0 || o.active != nil) && len(n.placement(oid)) == 0 {
			oids = append(oids, oid)
		}
	}
	slices.Sort(oids)
	for _, oid := range oids {
		n.failPrimary(n.objs[oid], ErrNoVDI)
		n.runPrimary(oid) // answers a revoke that waited for the object to be idle
	}
}

// failPrimary answers the operations o has queued or running at this
// node as its primary with code, and drops them.
func (n *Node) failPrimary(o *object, code Code) {
	for _, p := range o.queue {
		n.respondIO(p, code, nil)
	}
	o.queue = nil
	if p := o.active; p != nil {
		for _, id := range p.calls {
			n.cancel(id)
		}
		if !p.replied {
			n.respondIO(p, code, nil)
		}
		o.active = nil
	}
}
