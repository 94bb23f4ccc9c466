package daemon

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/sheepdog-go/sheepdog/core"
)

// FuzzAdminRequest decodes admin requests as onAdmin does, from the
// payload of an admin frame. A request that decodes re-encodes to one that
// decodes the same (strings are valid UTF-8 once decoded), its data is no
// larger than the payload could carry, and a peer message smuggled in
// "peer.msg" goes through the core decoder without harm.
func FuzzAdminRequest(f *testing.F) {
	join, err := (&core.Message{Type: core.MsgJoin, Node: &core.NodeInfo{ID: 5, Addr: "10.0.0.5:7000"}}).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	for _, r := range []AdminRequest{
		{Cmd: "cluster.format", Copies: 3, BlockShift: 22},
		{Cmd: "cluster.info"},
		{Cmd: "vdi.create", Name: "alice", Size: 40 << 30, Copies: 2, Prealloc: true},
		{Cmd: "vdi.read", Name: "alice", Offset: 4096, Length: 5, Data: []byte("hello")},
		{Cmd: "vdi.snapshot", Name: "alice", Tag: "before-upgrade"},
		{Cmd: "vdi.clone", Name: "alice", Snap: 2, Dst: "bob"},
		{Cmd: "vdi.delete", Name: "alice", Tag: "x", Force: true},
		{Cmd: "vdi.flatten", Name: "bob", Forwarded: true},
		{Cmd: "node.objects", VID: 0x7c2b25},
		{Cmd: "peer.msg", Data: join},
	} {
		b, err := json.Marshal(&r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"cmd":"vdi.create","name":"\ud800","size":-1}`))
	f.Add([]byte(`{"cmd":"vdi.write","data":"!!!","offset":18446744073709551615}`))
	f.Add([]byte(`[{"cmd":1}]`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		var r AdminRequest
		if err := json.Unmarshal(payload, &r); err != nil {
			return
		}
		if len(r.Data) > len(payload) || len(r.Cmd)+len(r.Name)+len(r.Tag)+len(r.Dst) > 3*len(payload) {
			t.Fatalf("request decoded from %d bytes holds more", len(payload))
		}
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("decoded request does not encode: %v", err)
		}
		var r2 AdminRequest
		if err := json.Unmarshal(b, &r2); err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if diff := cmp.Diff(r, r2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("decode(encode(request)) differs (-r +r2):\n%s", diff)
		}
		if r.Cmd == "peer.msg" {
			if m, err := core.UnmarshalMessage(r.Data); err == nil {
				if _, err := m.Marshal(); err != nil {
					t.Fatalf("peer message of an admin request does not re-encode: %v", err)
				}
			}
		}
	})
}
