package core

import "slices"

// Checking a VDI (`vdi check`): every object it reads (its own, those
// it shares with ancestors, and its table objects) goes through its primary,
// which orders the check like a write. The primary verifies its own copy
// (checksums, repairing it from a co-replica if corrupted), then asks each
// replica to verify its copy against the primary's version; a replica
// whose copy is corrupted, missing or at another version replaces it with
// the primary's.

const checkWindow = 32

func (n *Node) clientCheck(r *Request) {
	v := n.requestVDI(r)
	if v == nil {
		return
	}
	if v.Building {
		n.whenBuilt(v.ID, n.now+int64(n.t.OpTimeoutTicks), func(code Code) {
			if code != OK {
				n.reply(Reply{ID: r.ID, Code: code, VID: v.ID})
				return
			}
			n.clientCheck(r)
		})
		return
	}
	cop := &clientOp{req: r, vid: v.ID, deadline: n.now + int64(n.t.OpTimeoutTicks)}
	objs := v.Objects()
	tbl := n.tableOf(v)
	chunks := uint32(0)
	if tbl != nil {
		chunks = tableChunks(objs)
	}
	total := objs + chunks
	cop.pending = int(total)
	if total == 0 {
		n.reply(Reply{ID: r.ID, VID: v.ID})
		return
	}
	n.gw.watch(n, cop)
	next := uint32(0)
	var launch func()
	launch = func() {
		for next < total && int(next)-int(total)+cop.pending < checkWindow {
			i := next
			next++
			s := &subOp{cop: cop, oid: DataOID(v.ID, i), op: OpCheck, len: uint32(1) << v.BlockShift, onDone: launch}
			switch {
			case i >= objs:
				s.oid, s.len = TableOID(v.ID, i-objs), TableChunkSize
				n.gw.dispatch(n, s)
			case tbl != nil:
				n.withEntry(tbl, i, func(entry uint32) {
					s.oid, _ = ownerOID(v.ID, entry, i)
					n.gw.dispatch(n, s)
				})
			default:
				n.gw.dispatch(n, s)
			}
		}
	}
	launch()
}

// primaryCheck runs OpCheck at the primary, exclusively.
func (n *Node) primaryCheck(oid OID, o *object, p *primOp) {
	o.active = p
	epoch := n.epoch
	// current: the check was not aborted by an epoch change meanwhile (a
	// stale check must not tell replicas to take its copy).
	current := func() bool { return o.active == p && epoch == n.epoch }
	finish := func(code Code) {
		if !current() {
			return
		}
		o.active = nil
		n.respondIOCount(p, code, uint32(p.repaired))
		n.runPrimary(oid)
	}
	verifyReplicas := func() {
		if !current() {
			return
		}
		others := p.reps[1:]
		if len(others) == 0 {
			finish(OK)
			return
		}
		left := len(others)
		for _, r := range others {
			id := n.rpc(&Message{Type: MsgCheckReq, To: r, OID: oid, Version: o.meta.Version, Fence: p.fence}, func(resp *Message) {
				if !current() {
					return
				}
				switch resp.Code {
				case OK:
				case ErrNotReady:
					finish(ErrNotReady)
					return
				default:
					if p.code == OK {
						p.code = resp.Code
					}
				}
				if resp.Flags&FlagRepaired != 0 {
					p.repaired++
				}
				left--
				if left == 0 {
					finish(p.code)
				}
			})
			p.calls = append(p.calls, id)
		}
	}
	if !o.present || o.meta.Deleted {
		verifyReplicas()
		return
	}
	n.verifyLocal(oid, func(code Code) {
		if !current() {
			return
		}
		switch code {
		case OK:
			verifyReplicas()
		case ErrCorrupt:
			n.repair(oid, func(ok bool) {
				if !ok {
					finish(ErrCorrupt)
					return
				}
				p.repaired++
				verifyReplicas()
			})
		default:
			finish(code)
		}
	})
}

// handleCheck verifies the local copy against the primary's version and
// replaces it with the primary's copy if it is corrupted or differs.
func (n *Node) handleCheck(m *Message) {
	if !n.epochGate(m, MsgCheckResp) {
		return
	}
	if reps := n.placement(m.OID); len(reps) == 0 || reps[0] != m.From || !slices.Contains(reps, n.id) {
		n.respond(m, MsgCheckResp, ErrInvalid) // only the epoch's primary checks its replicas
		return
	}
	if !n.objectReady(m.OID) {
		n.whenReady(m.OID, func() { n.handleCheck(m) })
		return
	}
	o := n.obj(m.OID)
	if o.fenced(m) || o.superseded(m) {
		n.respond(m, MsgCheckResp, OK) // from before a later hand-over or write: answered long ago
		return
	}
	if o.diskBusy || o.catchingUp || o.repairing {
		o.waiting = append(o.waiting, func() { n.handleCheck(m) })
		return
	}
	fix := func() {
		n.mirror(m.OID, m.From, func(c Code) {
			r := n.respond(m, MsgCheckResp, c)
			if c == OK {
				r.Flags |= FlagRepaired
			}
		})
	}
	switch {
	case !o.present && m.Version == 0:
		n.respond(m, MsgCheckResp, OK)
	case !o.present || o.meta.Version != m.Version:
		// Another version than the primary's (or an old retransmission
		// of its request): take the primary's current state.
		fix()
	case o.meta.Deleted:
		n.respond(m, MsgCheckResp, OK)
	default:
		n.verifyLocal(m.OID, func(code Code) {
			switch code {
			case OK:
				n.respond(m, MsgCheckResp, OK)
			case ErrCorrupt:
				n.note("object " + m.OID.String() + " is corrupted here: replacing it with the primary's copy")
				fix()
			default:
				n.respond(m, MsgCheckResp, code)
			}
		})
	}
}
