package core

import "testing"

// TestStashedReplicaWrite: a replica write sent without its data
// (FlagStashed) takes the data from this node's gateway queue if the write
// is its own, and otherwise asks the primary for the data (ErrNeedData)
// instead of applying anything.
func TestStashedReplicaWrite(t *testing.T) {
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	oid := DataOID(d.formatAndCreate(t, next), 0)
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte(i)
	}

	// repl delivers a stashed replication of a write with reqID and
	// returns the node's answer and the disk writes it issued.
	repl := func(reqID uint64) (*Message, []DiskOp) {
		m := &Message{Type: MsgRepl, From: d.n.id, To: d.n.id, ID: next(), Epoch: d.n.epoch, OID: oid, Op: OpWrite,
			Len: 4096, Flags: FlagStashed, Version: uint64(d.n.epoch)<<32 | 1, ReqID: reqID}
		d.n.Step(m)
		var resp *Message
		var ops []DiskOp
		for d.n.HasReady() {
			rd := d.n.Ready()
			for _, out := range rd.Messages {
				if out.Type == MsgReplResp && out.ID == m.ID {
					resp = out
				}
			}
			ops = append(ops, rd.Disk...)
			d.n.Advance()
		}
		return resp, ops
	}

	// Not this gateway's write: the primary must send the data.
	resp, ops := repl(1<<writeSeqBits | 7)
	if resp == nil || resp.Code != ErrNeedData || len(ops) != 0 {
		t.Fatalf("stashed replication of a write this gateway does not have: response %+v, disk writes %d; want ErrNeedData and none", resp, len(ops))
	}

	// This gateway's queued write: its data is used.
	reqID := uint64(1<<writeSeqBits | 9)
	d.n.gw.queues[oid] = []*subOp{{oid: oid, op: OpWrite, len: 4096, data: data, reqID: reqID}}
	_, ops = repl(reqID)
	if len(ops) != 1 || ops[0].Kind != DiskWrite || string(ops[0].Data) != string(data) {
		t.Fatalf("stashed replication of this gateway's write issued %+v; want one disk write of the queued data", ops)
	}
	if d.n.StashedWrites() != 1 {
		t.Fatalf("StashedWrites = %d, want 1", d.n.StashedWrites())
	}
}
