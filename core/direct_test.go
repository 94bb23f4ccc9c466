package core

import "testing"

// TestDirectGrantTokens: a grant that reaches the attacher after it
// answered a revoke of that grant (messages overtake each other) is
// ignored, a newer grant is taken, an old revoke's retransmission does not
// take a newer grant back, and a grant from another epoch is ignored.
func TestDirectGrantTokens(t *testing.T) {
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	oid := DataOID(d.formatAndCreate(t, next), 0)
	const primary = NodeID(99)
	n := d.n

	grant := func(token uint64, epoch uint32) {
		n.gw.takeGrant(n, &Message{Type: MsgIOResp, From: primary, To: n.id, Epoch: epoch, OID: oid, Flags: FlagDirect, Version: token})
	}
	// revoke delivers a revoke of token and returns the node's answer, if any.
	revoke := func(token uint64) *Message {
		m := &Message{Type: MsgRevoke, From: primary, To: n.id, ID: next(), Epoch: n.epoch, OID: oid, Version: token}
		n.Step(m)
		var resp *Message
		for n.HasReady() {
			for _, out := range n.Ready().Messages {
				if out.Type == MsgRevokeResp && out.ID == m.ID {
					resp = out
				}
			}
			n.Advance()
		}
		return resp
	}

	grant(5, n.epoch)
	if !n.gw.ownsDirect(oid) {
		t.Fatal("grant 5 not taken")
	}
	if r := revoke(5); r == nil || r.Code != OK || n.gw.ownsDirect(oid) {
		t.Fatalf("revoke 5: answer %v, still owned %v; want OK and given back", r, n.gw.ownsDirect(oid))
	}
	grant(5, n.epoch) // overtaken by its own revoke
	if n.gw.ownsDirect(oid) {
		t.Fatal("a grant revoked before it arrived was taken")
	}
	grant(7, n.epoch-1)
	if n.gw.ownsDirect(oid) {
		t.Fatal("a grant of another epoch was taken")
	}
	grant(7, n.epoch)
	if !n.gw.ownsDirect(oid) {
		t.Fatal("grant 7 not taken")
	}
	if r := revoke(5); r != nil || !n.gw.ownsDirect(oid) {
		t.Fatalf("an old revoke's retransmission: answer %v, still owned %v; want no answer and still owned", r, n.gw.ownsDirect(oid))
	}
	if r := revoke(7); r == nil || r.Code != OK || n.gw.ownsDirect(oid) {
		t.Fatalf("revoke 7: answer %v, still owned %v; want OK and given back", r, n.gw.ownsDirect(oid))
	}
}

// TestFencedRequests: a replica that has seen a request sent under a
// hand-over answers a late copy of a request from before it without
// acting on it (a convergence or a check would otherwise make its copy the
// primary's again, undoing the attacher's writes); so it does with a
// convergence or check its sender sent before a write it replicated here
// since; and it still acts on current requests.
func TestFencedRequests(t *testing.T) {
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	oid := DataOID(d.formatAndCreate(t, next), 0)
	n := d.n

	// deliver hands m to the node and returns its answer to m and the disk
	// operations and messages it issued meanwhile.
	deliver := func(m *Message, answer MsgType) (*Message, []DiskOp, []*Message) {
		if m.ID == 0 {
			m.ID = next()
		}
		m.To, m.Epoch, m.OID = n.id, n.epoch, oid
		n.Step(m)
		var resp *Message
		var ops []DiskOp
		var out []*Message
		for n.HasReady() {
			rd := n.Ready()
			for _, o := range rd.Messages {
				if o.Type == answer && o.ID == m.ID {
					resp = o
				} else {
					out = append(out, o)
				}
			}
			ops = append(ops, rd.Disk...)
			n.Advance()
		}
		return resp, ops, out
	}

	// The node saw a write under hand-over 9 (as the solo node is every
	// object's primary, it plays the primary sending to itself).
	w := &Message{Type: MsgRepl, From: n.id, Op: OpWrite, Len: 4096, Data: make([]byte, 4096),
		Version: uint64(n.epoch)<<32 | 1, ReqID: 1<<writeSeqBits | 1, Fence: 9}
	if _, ops, _ := deliver(w, MsgReplResp); len(ops) != 1 {
		t.Fatalf("write under hand-over 9 issued %d disk operations, want 1", len(ops))
	}
	// (The write stays in flight: a request the node acts on waits for it.)
	for _, tt := range []struct {
		name   string
		m      *Message
		answer MsgType
		acts   bool
	}{
		{"converge from before", &Message{Type: MsgRepl, From: n.id, Op: OpConverge, Version: 7, Fence: 3}, MsgReplResp, false},
		{"check from before", &Message{Type: MsgCheckReq, From: n.id, Version: 7, Fence: 3}, MsgCheckResp, false},
		{"converge sent before the write", &Message{Type: MsgRepl, From: n.id, ID: 1, Op: OpConverge, Version: 7, Fence: 9}, MsgReplResp, false},
		{"check sent before the write", &Message{Type: MsgCheckReq, From: n.id, ID: 1, Version: 7, Fence: 9}, MsgCheckResp, false},
		{"converge now", &Message{Type: MsgRepl, From: n.id, Op: OpConverge, Version: 7, Fence: 9}, MsgReplResp, true},
	} {
		resp, ops, out := deliver(tt.m, tt.answer)
		acted := len(ops) > 0 || len(out) > 0 || resp == nil
		if acted != tt.acts {
			t.Errorf("%s: acted %v (answer %v, %d disk operations, %d messages), want %v", tt.name, acted, resp, len(ops), len(out), tt.acts)
		}
		if !tt.acts && (resp == nil || resp.Code != OK) {
			t.Errorf("%s: answer %v, want OK at once", tt.name, resp)
		}
	}
}

// TestFetchWaitsForWriteInFlight: a fetch (recovery, repair) that arrives
// while the first write of an object is in flight here is answered once
// the write has landed, with its version, not at once with "no object".
func TestFetchWaitsForWriteInFlight(t *testing.T) {
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	oid := DataOID(d.formatAndCreate(t, next), 3) // never written
	n := d.n

	// drain runs the node's Ready and returns the fetch answers it sent
	// and the disk operations it issued.
	drain := func() (answers []*Message, ops []DiskOp) {
		for n.HasReady() {
			rd := n.Ready()
			for _, m := range rd.Messages {
				if m.Type == MsgFetchResp {
					answers = append(answers, m)
				}
			}
			ops = append(ops, rd.Disk...)
			n.Advance()
		}
		return answers, ops
	}
	version := uint64(n.epoch)<<32 | 1
	n.Step(&Message{Type: MsgRepl, From: n.id, To: n.id, Epoch: n.epoch, OID: oid, ID: next(), Op: OpWrite, Len: 4096,
		Data: make([]byte, 4096), Version: version, ReqID: 1<<writeSeqBits | 1})
	_, ops := drain()
	if len(ops) != 1 || ops[0].Kind != DiskWrite {
		t.Fatalf("the write issued %v, want one disk write", ops)
	}
	fetch := &Message{Type: MsgFetchReq, From: n.id, To: n.id, Epoch: n.epoch, OID: oid, ID: next()}
	n.Step(fetch)
	if answers, _ := drain(); len(answers) != 0 {
		t.Fatalf("fetch answered %v while the write was in flight", answers[0].Code)
	}
	n.Step(DiskDone{ID: ops[0].ID, Err: OK, Meta: ops[0].Meta})
	written := ops[0].Meta
	var got []*Message
	for i := 0; i < 10 && len(got) == 0; i++ {
		answers, ops := drain()
		got = append(got, answers...)
		for _, op := range ops { // the fetch's read of the object
			n.Step(DiskDone{ID: op.ID, Err: OK, Data: make([]byte, op.Len), Meta: written})
		}
		n.Step(Tick{})
	}
	if len(got) != 1 || got[0].ID != fetch.ID || got[0].Code != OK || got[0].Version != version {
		t.Fatalf("fetch answers %+v, want one OK at version %x", got, version)
	}
}
