package core

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestListIndexFollowsObjects: the objects handleList answers with, per
// asking node, are those a fresh pass over the local objects places on
// it, through writes of new objects, a changed ring and deletions.
func TestListIndexFollowsObjects(t *testing.T) {
	d, next, vid := newAttachedSolo(t)
	write := func(t *testing.T, objs ...uint64) {
		for _, o := range objs {
			w := &Request{ID: next(), Type: ReqWrite, VID: vid, Off: o << 22, Data: make([]byte, 4096)}
			if rep, ok := d.do(w, 100); !ok || rep.Code != OK {
				t.Fatalf("write to object %d: %+v (answered %v)", o, rep, ok)
			}
		}
	}
	others := testNodes(12, 64)[1:] // ids 2..12 beside the node (id 1)
	tests := []struct {
		name   string
		change func(t *testing.T)
	}{
		{"first objects", func(t *testing.T) { write(t, 0, 1, 2, 3) }},
		{"more objects", func(t *testing.T) { write(t, 4, 5, 6, 7, 8, 9) }},
		{"rewrites only", func(t *testing.T) { write(t, 0, 5) }},
		{"ring of twelve nodes", func(t *testing.T) { d.n.ring = NewRing(append([]NodeInfo{d.n.self}, others...)) }},
		{"objects stored under it", func(t *testing.T) {
			// Recovery's copies: the node is not the primary of most.
			for i := uint32(10); i < 40; i++ {
				d.n.writeLocal(DiskOp{Kind: DiskPut, OID: DataOID(vid, i), Meta: ObjMeta{Version: 1}}, func(Code) {})
			}
			d.step(Tick{})
		}},
		{"objects deleted", func(t *testing.T) {
			for _, oid := range d.n.localObjects()[:3] {
				d.n.writeLocal(DiskOp{Kind: DiskDelete, OID: oid}, func(Code) {})
			}
			d.step(Tick{})
		}},
		{"ring of fewer nodes", func(t *testing.T) { d.n.ring = NewRing(append([]NodeInfo{d.n.self}, others[:4]...)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.change(t)
			want := map[NodeID][]OID{}
			for _, oid := range d.n.localObjects() {
				for _, id := range d.n.ring.Place(nil, oid, d.n.copiesOf(oid)) {
					want[id] = append(want[id], oid)
				}
			}
			got := d.n.listIndex()
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("list index differs from the objects' placement (-want +got):\n%s", diff)
			}
			if len(want) == 0 {
				t.Fatal("no objects stored: the test checks nothing")
			}
		})
	}
}
