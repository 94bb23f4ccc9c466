package core

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.etcd.io/raft/v3/raftpb"
)

func TestMessageRoundTrip(t *testing.T) {
	node := NodeInfo{ID: 7, Addr: "10.0.0.7:7000", NBDAddr: "10.0.0.7:10809", Zone: 3, VNodes: 1024, Incarnation: 9, Capacity: 1 << 40}
	tests := []struct {
		name string
		m    Message
	}{
		{"io write", Message{Type: MsgIO, From: 1, To: 2, Epoch: 5, ID: 99, OID: DataOID(0x7c2b25, 3), Op: OpWrite, Off: 512, Len: 4, Data: []byte{1, 2, 3, 4}, ReqID: 1<<40 | 5, Flags: FlagFUA}},
		{"repl", Message{Type: MsgRepl, From: 2, To: 3, Epoch: 5, ID: 100, OID: 42, Op: OpZero, Off: 0, Len: 4096, Version: 5<<32 | 2, Prev: 5<<32 | 1, Fence: 77}},
		{"join by address", Message{Type: MsgJoin, From: 7, ToAddr: "10.0.0.1:7000", Node: &node, Flags: 1}},
		{"4 KiB write", Message{Type: MsgRepl, From: 1, To: 2, ToAddr: "127.0.0.1:7002", Epoch: 3, ID: 8, OID: 42, Op: OpWrite, Len: 4096, Data: make([]byte, 4096), Version: 3<<32 | 9}},
		{"join ack", Message{Type: MsgJoinAck, From: 1, To: 7, Nodes: []NodeInfo{node, {ID: 1, Addr: "10.0.0.1:7000", Zone: 1, VNodes: 8}}}},
		{"list response", Message{Type: MsgListResp, From: 1, To: 7, Epoch: 6, ID: 3, Objects: []ObjVersion{{OID: 1, Version: 2}, {OID: 3, Version: 4, Deleted: true}}}},
		{"sync", Message{Type: MsgSync, From: 1, To: 2, Epoch: 6, ID: 4, OIDs: []OID{1, 2, 3}}},
		{"error response", Message{Type: MsgIOResp, From: 2, To: 1, Epoch: 7, ID: 5, Code: ErrStaleEpoch}},
		{"raft", Message{Type: MsgRaft, From: 1, To: 2, Raft: &raftpb.Message{Type: raftpb.MsgApp, From: 1, To: 2, Term: 3, Index: 10, LogTerm: 3, Commit: 9,
			Entries: []raftpb.Entry{{Term: 3, Index: 11, Data: []byte("x")}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tt.m.Size() || cap(b) != tt.m.Size() {
				t.Fatalf("encoded %d bytes in a buffer of %d; Size says %d", len(b), cap(b), tt.m.Size())
			}
			head, data, err := tt.m.MarshalSplit()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(append(head, data...), b) {
				t.Fatal("MarshalSplit's head and data differ from Marshal")
			}
			if len(tt.m.Data) > 0 && &data[0] != &tt.m.Data[0] {
				t.Fatal("MarshalSplit copied the data")
			}
			got, err := UnmarshalMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&tt.m, got, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnmarshalMessageRejectsBadInput(t *testing.T) {
	good, _ := (&Message{Type: MsgIO, From: 1, To: 2, Data: []byte("abc"), OIDs: []OID{1}}).Marshal()
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"bad magic", append([]byte{0, 0}, good[2:]...)},
		{"truncated", good[:len(good)-3]},
		{"trailing bytes", append(append([]byte(nil), good...), 0)},
		{"data length beyond the end", func() []byte { b := append([]byte(nil), good...); return b[:len(b)-1] }()},
		{"unknown type", func() []byte { b := append([]byte(nil), good...); b[2] = 200; return b }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := UnmarshalMessage(tt.b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestCmdRoundTrip(t *testing.T) {
	c := &Cmd{Type: CmdJoin, Proposer: 3, PropID: 1<<32 | 5, Node: NodeInfo{ID: 3, Addr: "x:1", Zone: 2, VNodes: 5}, AutoVNodes: true,
		NodeID: 4, Inc: 2, Name: "alice", Size: 1 << 30, Copies: 3, BlockShift: 22, Time: 1700000000, VID: 0x7c2b25, Force: true, Term: 4, Epoch: 9}
	got, err := unmarshalCmd(c.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, got, cmpopts.IgnoreUnexported(Cmd{})); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if _, err := unmarshalCmd(c.marshal()[:10]); err == nil {
		t.Fatal("truncated entry accepted")
	}
}
