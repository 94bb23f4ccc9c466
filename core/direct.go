package core

import "slices"

// Direct writes. A VDI's attacher is its only writer. When it also holds
// a replica of an object but is not the object's primary, every write
// through the primary costs four one-way trips (gateway → primary →
// replicas → primary → gateway). So the primary may hand the object over:
// after a write it acknowledges with nothing else queued, it grants the
// attacher the object for the rest of the epoch (FlagDirect on the
// response, with a token). The attacher then acts as the object's primary
// itself — it orders its operations, gives versions, writes locally and
// to the other replicas (primary included) and serves reads under the
// same leases a primary needs — and a write costs two trips.
//
// The primary starts nothing on the object while it is handed over. Any
// operation that reaches it (another gateway's write, a check, a read
// from elsewhere) first revokes the grant: the attacher stops taking new
// operations on the object, answers once the ones it started have
// settled (every replica answered, a failed write converged), and
// reports the highest version it gave so the primary never gives one
// twice. A grant belongs to one epoch; an epoch change ends it on both
// sides, and the attacher's unsettled operations fail over to the new
// primary like any primary's. A grant that reaches the attacher after it
// answered a revoke of the same or a later token is ignored.

// direct is a grant made by this node as an object's primary.
type direct struct {
	to       NodeID
	token    uint64
	revoking bool
}

// grantDirect hands oid over to the gateway p came from, if p asked for
// it and that is safe: the write succeeded, nothing else waits for the
// object, and the asker holds a replica and the VDI's attach lock as far
// as this node knows. It reports the token (0: not granted).
func (n *Node) grantDirect(oid OID, o *object, p *primOp) uint64 {
	m := p.m
	if m.Flags&FlagAskDirect == 0 || p.code != OK || p.dedup || n.cfg.NoDirect || m.From == n.id ||
		len(o.queue) > 0 || n.grants[oid] != nil || !slices.Contains(p.reps, m.From) {
		return 0
	}
	if v := n.cs.VDI(oid.VID()); v == nil || v.Owner != m.From {
		return 0
	}
	d := &direct{to: m.From, token: n.newID()}
	n.grants[oid] = d
	n.fences[oid] = d.token
	return d.token
}

// revokeDirect takes oid back from the node it was granted to; the
// primary's queue runs again once that node answered.
func (n *Node) revokeDirect(oid OID, d *direct) {
	if d.revoking {
		return
	}
	d.revoking = true
	epoch := n.epoch
	n.rpc(&Message{Type: MsgRevoke, To: d.to, OID: oid, Version: d.token}, func(resp *Message) {
		if epoch != n.epoch || n.grants[oid] != d {
			return
		}
		if resp.Code != OK {
			// Not in this epoch (yet), or not serving: ask again; an epoch
			// change ends the grant if the holder is gone.
			n.after(int64(n.t.RetryTicks), func() {
				if epoch == n.epoch && n.grants[oid] == d {
					d.revoking = false
					n.revokeDirect(oid, d)
				}
			})
			return
		}
		delete(n.grants, oid)
		n.revoked++
		o := n.obj(oid)
		o.assigned = max(o.assigned, resp.Prev)
		n.runPrimary(oid)
	})
}

// handleRevoke gives back an object this node writes directly. It
// answers once no operation it started on the object as its primary is
// unsettled.
func (n *Node) handleRevoke(m *Message) {
	if !n.epochGate(m, MsgRevokeResp) {
		return
	}
	g := &n.gw
	g.revokedUpTo[m.OID] = max(g.revokedUpTo[m.OID], m.Version)
	if t, ok := g.direct[m.OID]; ok && t <= m.Version {
		delete(g.direct, m.OID)
	}
	n.revokes[m.OID] = m
	n.answerRevoke(m.OID)
}

// answerRevoke answers a pending revoke of oid once the object is
// settled here.
func (n *Node) answerRevoke(oid OID) {
	m := n.revokes[oid]
	if m == nil {
		return
	}
	if _, ok := n.gw.direct[oid]; ok {
		delete(n.revokes, oid) // granted again since (a newer token): nothing to give back
		return
	}
	o := n.objs[oid]
	if o != nil && (o.active != nil || len(o.queue) > 0) {
		if o.active == nil {
			n.runPrimary(oid) // refuses what was queued: the grant is gone
		}
		return
	}
	delete(n.revokes, oid)
	r := n.respond(m, MsgRevokeResp, OK)
	if o != nil {
		r.Prev = max(o.assigned, o.meta.Version)
	}
}

// ownsDirect reports whether this node writes oid directly now.
func (g *gateway) ownsDirect(oid OID) bool {
	_, ok := g.direct[oid]
	return ok
}

// takeGrant records a grant that came with the answer m to one of this
// gateway's operations.
func (g *gateway) takeGrant(n *Node, m *Message) {
	if m.Flags&FlagDirect == 0 || m.Version == 0 || m.From == n.id || m.Epoch != n.epoch || m.Version <= g.revokedUpTo[m.OID] {
		return
	}
	g.direct[m.OID] = max(g.direct[m.OID], m.Version)
	// As a replica too, this node now refuses requests from before the grant.
	n.obj(m.OID).raiseFence(m.Version, m.Epoch)
}

// endDirect forgets the grants of the old epoch, given and taken.
func (n *Node) endDirect() {
	clear(n.grants)
	clear(n.fences)
	clear(n.revokes)
	clear(n.gw.direct)
	clear(n.gw.revokedUpTo)
}

// selfFirst returns reps with this node moved to the front: the
// placement of an object this node writes directly.
func selfFirst(reps []NodeID, self NodeID) []NodeID {
	out := make([]NodeID, 0, len(reps))
	out = append(out, self)
	for _, r := range reps {
		if r != self {
			out = append(out, r)
		}
	}
	return out
}

// DirectOps counts the operations this node ran as the primary of an
// object it was handed over.
func (n *Node) DirectOps() uint64 { return n.gw.directOps }

// Revokes counts the objects this node, as their primary, took back.
func (n *Node) Revokes() uint64 { return n.revoked }
