package core

import "slices"

// Refill. A replica with a full disk that cannot take the primary's copy
// of an object keeps its older one and lets the primary go on
// (handleConverge), so that operations on the object do not wait behind
// it. It owes the object a current copy: every RetryTicks it asks a
// co-replica for one (first the node whose copy it could not take) until
// it has it (space came back), the object no longer needs it (deleted,
// placed elsewhere), or an epoch change hands the job to recovery, which
// fetches the newest version anyway. Meanwhile it counts as missing that
// replica (Stats.Refill, the simulator's fault budget), and as the
// object's primary it serves reads of it from that co-replica and has
// writes retried.

// owe records that this node's copy of oid is older than from's.
func (n *Node) owe(oid OID, from NodeID) {
	if n.refill == nil {
		n.refill = map[OID]NodeID{}
	}
	n.refill[oid] = from
}

// owes reports whether this node's copy of oid missed writes it has not
// taken since.
func (n *Node) owes(oid OID) bool {
	_, ok := n.refill[oid]
	return ok
}

func (n *Node) tickRefill() {
	if len(n.refill) == 0 || n.now%int64(max(n.t.RetryTicks, 1)) != 0 {
		return
	}
	oids := make([]OID, 0, len(n.refill))
	for oid := range n.refill {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	for _, oid := range oids {
		reps := n.placement(oid)
		o := n.obj(oid)
		if !slices.Contains(reps, n.id) {
			delete(n.refill, oid) // not ours any more
			continue
		}
		if o.catchingUp || o.diskBusy || o.repairing || o.applying != 0 || o.reading > 0 || !n.objectReady(oid) {
			continue
		}
		src := n.refillSource(oid, reps)
		if src == 0 {
			delete(n.refill, oid)
			continue
		}
		n.catchUpFrom(oid, src, 0, func(c Code) {
			switch c {
			case OK, ErrNoObject:
				delete(n.refill, oid)
			case ErrNoSpace:
			default:
				if n.owes(oid) { // try the next co-replica
					i := slices.Index(reps, src)
					n.refill[oid] = reps[(i+1)%len(reps)]
				}
			}
			n.wake(oid)
		})
	}
}

// refillSource is the co-replica to take oid's current copy from: the one
// whose copy this node could not take, or else the first other replica.
func (n *Node) refillSource(oid OID, reps []NodeID) NodeID {
	if src := n.refill[oid]; src != n.id && slices.Contains(reps, src) {
		return src
	}
	for _, r := range reps {
		if r != n.id {
			return r
		}
	}
	return 0
}

// proxyRead serves a read of an object this primary owes from the
// co-replica that has the current copy, without storing it.
func (n *Node) proxyRead(oid OID, p *primOp) {
	src := n.refillSource(oid, n.placement(oid))
	if src == 0 {
		n.respondIO(p, ErrNotReady, nil)
		return
	}
	n.rpc(&Message{Type: MsgFetchReq, To: src, OID: oid}, func(resp *Message) {
		deleted := resp.Flags&FlagDeleted != 0
		switch {
		case resp.Code == ErrNoObject && p.m.Flags&FlagInherited == 0:
			deleted = true // never written there either: zeros
		case resp.Code != OK:
			n.respondIO(p, ErrNotReady, nil)
			return
		}
		if p.m.Op == OpStat {
			var has uint32
			if !deleted {
				has = 1
			}
			n.respondIOCount(p, OK, has)
			return
		}
		data := make([]byte, p.m.Len)
		if !deleted && int(p.m.Off) < len(resp.Data) {
			copy(data, resp.Data[p.m.Off:])
		}
		n.respondIO(p, OK, data)
	})
}
