package core

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func node(id NodeID, inc uint64) NodeInfo {
	return NodeInfo{ID: id, Addr: "10.0.0.1:7000", Zone: uint32(id), VNodes: 64, Incarnation: inc, Capacity: 100}
}

// TestClusterStateApply walks the cluster log through the commands a
// cluster sees and checks each result.
func TestClusterStateApply(t *testing.T) {
	s := NewClusterState()
	steps := []struct {
		name string
		cmd  Cmd
		want Result
	}{
		{"create before format", Cmd{Type: CmdVDICreate, Name: "test", Size: 1 << 30}, Result{Code: ErrNotFormatted}},
		{"join 1", Cmd{Type: CmdJoin, Node: node(1, 1)}, Result{}},
		{"join 2", Cmd{Type: CmdJoin, Node: node(2, 1)}, Result{}},
		{"join 3", Cmd{Type: CmdJoin, Node: node(3, 1)}, Result{}},
		{"join 4", Cmd{Type: CmdJoin, Node: node(4, 1)}, Result{}},
		{"format bad shift", Cmd{Type: CmdFormat, Copies: 3, BlockShift: 40}, Result{Code: ErrInvalid}},
		{"format", Cmd{Type: CmdFormat, Copies: 3, BlockShift: 22}, Result{}},
		{"create test", Cmd{Type: CmdVDICreate, Name: "test", Size: 1 << 30}, Result{VID: 0x7c2b25}},
		{"create twice", Cmd{Type: CmdVDICreate, Name: "test", Size: 1 << 30}, Result{Code: ErrVDIExists}},
		{"bad name", Cmd{Type: CmdVDICreate, Name: "a@b", Size: 1}, Result{Code: ErrInvalid}},
		{"too big", Cmd{Type: CmdVDICreate, Name: "big", Size: 1 << 50}, Result{Code: ErrInvalid}},
		{"attach", Cmd{Type: CmdAttach, VID: 0x7c2b25, NodeID: 1, Inc: 1}, Result{VID: 0x7c2b25, Gen: 1}},
		{"attach again, same holder", Cmd{Type: CmdAttach, VID: 0x7c2b25, NodeID: 1, Inc: 1}, Result{VID: 0x7c2b25, Gen: 1}},
		{"attach elsewhere", Cmd{Type: CmdAttach, VID: 0x7c2b25, NodeID: 2, Inc: 1}, Result{Code: ErrLocked, VID: 0x7c2b25}},
		{"delete attached", Cmd{Type: CmdVDIDelete, Name: "test"}, Result{Code: ErrLocked, VID: 0x7c2b25}},
		{"attach forced", Cmd{Type: CmdAttach, VID: 0x7c2b25, NodeID: 2, Inc: 1, Force: true}, Result{VID: 0x7c2b25, Gen: 2}},
		{"holder restarts: lock is free", Cmd{Type: CmdJoin, Node: node(2, 2)}, Result{}},
		{"attach after holder restart", Cmd{Type: CmdAttach, VID: 0x7c2b25, NodeID: 3, Inc: 1}, Result{VID: 0x7c2b25, Gen: 3}},
		{"detach", Cmd{Type: CmdDetach, VID: 0x7c2b25, NodeID: 3, Inc: 1}, Result{VID: 0x7c2b25}},
		{"shrink refused", Cmd{Type: CmdVDIResize, Name: "test", Size: 1 << 20}, Result{Code: ErrInvalid, VID: 0x7c2b25}},
		{"grow", Cmd{Type: CmdVDIResize, Name: "test", Size: 2 << 30}, Result{VID: 0x7c2b25}},
		{"delete", Cmd{Type: CmdVDIDelete, Name: "test"}, Result{VID: 0x7c2b25}},
		{"recreate takes the next id", Cmd{Type: CmdVDICreate, Name: "test", Size: 1 << 30}, Result{VID: 0x7c2b26}},
		{"first removal", Cmd{Type: CmdLeave, NodeID: 4, Inc: 1}, Result{}},
		{"a restarted node that has not recovered counts as missing", Cmd{Type: CmdLeave, NodeID: 3, Inc: 1}, Result{Code: ErrBusy}},
		{"node 2 recovered", Cmd{Type: CmdRecovered, NodeID: 2, Inc: 2}, Result{}},
		{"second removal", Cmd{Type: CmdLeave, NodeID: 3, Inc: 1}, Result{}},
		{"third removal would lose every copy", Cmd{Type: CmdLeave, NodeID: 2, Inc: 2}, Result{Code: ErrBusy}},
		{"old incarnation leaves: no-op", Cmd{Type: CmdLeave, NodeID: 2, Inc: 1}, Result{}},
		{"stable point", Cmd{Type: CmdStable, Epoch: 0}, Result{}},
		{"reformat with VDIs refused", Cmd{Type: CmdFormat, Copies: 2, BlockShift: 22}, Result{Code: ErrInvalid}},
	}
	for _, st := range steps {
		c := st.cmd
		if c.Type == CmdStable || c.Type == CmdRecovered {
			c.Epoch = s.Epoch
		}
		if got := s.apply(&c); got != st.want {
			t.Fatalf("%s: got %+v, want %+v", st.name, got, st.want)
		}
	}
	// 4 joins + restart of 2 + two removals = 7 epochs.
	if s.Epoch != 7 || len(s.Nodes) != 2 || len(s.Removed) != 0 || len(s.Restarted) != 0 {
		t.Fatalf("epoch %d, %d nodes, removed %v", s.Epoch, len(s.Nodes), s.Removed)
	}
	if !s.CanRemove() {
		t.Fatal("after a stable point a removal must be allowed again")
	}
}

func TestProposalsApplyOnce(t *testing.T) {
	s := NewClusterState()
	s.apply(&Cmd{Type: CmdFormat, Copies: 3, BlockShift: 22})
	c := Cmd{Type: CmdVDICreate, Proposer: 5, PropID: 1, Name: "a", Size: 1 << 20}
	first := s.apply(&c)
	again := s.apply(&c)
	if first != again || first.Code != OK {
		t.Fatalf("retry of a proposal: %+v then %+v", first, again)
	}
	if n := len(s.VDIs()); n != 1 {
		t.Fatalf("%d VDIs after a retried create", n)
	}
	stale := Cmd{Type: CmdLeave, Proposer: 5, PropID: 2, stale: true}
	if r := s.apply(&stale); r.Code != ErrStale {
		t.Fatalf("a deposed leader's decision applied: %+v", r)
	}
}

func TestAutoVNodesWeighsCapacity(t *testing.T) {
	s := NewClusterState()
	s.apply(&Cmd{Type: CmdJoin, Node: node(1, 1), AutoVNodes: true})
	big := node(2, 1)
	big.Capacity = 300
	s.apply(&Cmd{Type: CmdJoin, Node: big, AutoVNodes: true})
	want := []uint16{DefaultVNodes, 3 * DefaultVNodes}
	var got []uint16
	for _, n := range s.Nodes {
		got = append(got, n.VNodes)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("vnodes (-want +got):\n%s", diff)
	}
}

func TestClusterStateSnapshotRoundTrip(t *testing.T) {
	s := NewClusterState()
	for _, c := range []Cmd{
		{Type: CmdJoin, Node: node(1, 1)}, {Type: CmdJoin, Node: node(2, 1)}, {Type: CmdJoin, Node: node(3, 1)},
		{Type: CmdFormat, Copies: 2, BlockShift: 20, Time: 17},
		{Type: CmdVDICreate, Name: "a", Size: 5 << 20, Proposer: 1, PropID: 9},
		{Type: CmdVDICreate, Name: "b", Size: 7 << 20, Copies: 1},
		{Type: CmdAttach, VID: HashVDIName("a"), NodeID: 2, Inc: 1},
		{Type: CmdVDIDelete, Name: "b"},
		{Type: CmdLeave, NodeID: 3, Inc: 1},
	} {
		s.apply(&c)
	}
	got, err := unmarshalClusterState(s.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, got, cmp.AllowUnexported(ClusterState{}, propResult{}), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("snapshot round trip (-want +got):\n%s", diff)
	}
}

// TestJoinBatch: a CmdJoin of several nodes makes them all members in one
// epoch, leaves out those already in with the same incarnation, counts a
// new incarnation of a member as restarted, and survives its encoding.
func TestJoinBatch(t *testing.T) {
	s := NewClusterState()
	s.apply(&Cmd{Type: CmdJoin, Node: node(5, 1)})
	s.apply(&Cmd{Type: CmdFormat, Copies: 3, BlockShift: 22})
	c := &Cmd{Type: CmdJoin, Node: node(3, 1), Joins: []Joiner{{Node: node(5, 1)}, {Node: node(1, 1)}, {Node: node(9, 1), AutoVNodes: true}}}
	c2, err := unmarshalCmd(c.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, c2, cmpopts.IgnoreUnexported(Cmd{})); diff != "" {
		t.Fatalf("decode(encode(join batch)) (-want +got):\n%s", diff)
	}
	if r := s.apply(c2); r.Code != OK {
		t.Fatalf("join batch: %v", r.Code)
	}
	var ids []NodeID
	for _, n := range s.Nodes {
		ids = append(ids, n.ID)
	}
	if diff := cmp.Diff([]NodeID{1, 3, 5, 9}, ids); diff != "" {
		t.Fatalf("members (-want +got):\n%s", diff)
	}
	if s.Epoch != 2 {
		t.Fatalf("epoch %d after a join and a batch, want 2", s.Epoch)
	}
	// Nothing new in a batch: no epoch.
	s.apply(&Cmd{Type: CmdJoin, Node: node(1, 1), Joins: []Joiner{{Node: node(3, 1)}}})
	if s.Epoch != 2 {
		t.Fatalf("epoch %d after a batch of members, want 2", s.Epoch)
	}
	s.apply(&Cmd{Type: CmdJoin, Node: node(1, 1), Joins: []Joiner{{Node: node(3, 2)}}})
	if diff := cmp.Diff([]NodeID{3}, s.Restarted); s.Epoch != 3 || diff != "" {
		t.Fatalf("epoch %d, restarted (-want +got):\n%s", s.Epoch, diff)
	}
	if r := s.apply(&Cmd{Type: CmdJoin, Node: node(2, 1), Joins: []Joiner{{}}}); r.Code != ErrInvalid {
		t.Fatalf("a batch with a node without id: %v, want %v", r.Code, ErrInvalid)
	}
	b := (&Cmd{Type: CmdJoin, Node: node(2, 1)}).marshal()
	if _, err := unmarshalCmd(append(b, 0, 0, 0, 0)); err == nil {
		t.Fatal("an empty join batch decoded")
	}
}
