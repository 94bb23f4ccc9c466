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
