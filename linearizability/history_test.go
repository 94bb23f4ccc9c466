package linearizability

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHistoryOps(t *testing.T) {
	tests := []struct {
		name string
		ops  []top
		want []Op
	}{
		{
			name: "empty",
			want: []Op{},
		},
		{
			name: "completed ops keep their times and read values",
			ops: []top{
				w(7, 0, 10).on(2, 5),
				{client: 3, block: 5, kind: Read, value: 7, call: 20, ret: 30, note: "gw=3 epoch=7"},
			},
			want: []Op{
				{Client: 2, Block: 5, Kind: Write, Value: 7, Call: 0, Return: 10},
				{Client: 3, Block: 5, Kind: Read, Value: 7, Call: 20, Return: 30, Note: "gw=3 epoch=7"},
			},
		},
		{
			name: "failed ops are dropped",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 30).with(failed),
				r(0, 40, 50).with(failed),
			},
			want: []Op{
				{Block: 1, Kind: Write, Value: 1, Call: 0, Return: 10},
			},
		},
		{
			name: "unknown and open writes are pending, unknown and open reads dropped",
			ops: []top{
				w(1, 0, 10).with(unknown),
				w(2, 5, 10).with(open),
				r(0, 20, 30).with(unknown),
				r(0, 40, 50).with(open),
			},
			want: []Op{
				{Block: 1, Kind: Write, Value: 1, Call: 0, Return: Pending},
				{Block: 1, Kind: Write, Value: 2, Call: 5, Return: Pending},
			},
		},
		{
			name: "invocation order, not completion order",
			ops: []top{
				r(3, 50, 60),
				w(3, 10, 100),
				r(0, 0, 5).on(1, 1),
			},
			want: []Op{
				{Client: 1, Block: 1, Kind: Read, Value: 0, Call: 0, Return: 5},
				{Block: 1, Kind: Write, Value: 3, Call: 10, Return: 100},
				{Block: 1, Kind: Read, Value: 3, Call: 50, Return: 60},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := record(tt.ops)
			got := h.Ops()
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Ops() mismatch (-want +got):\n%s", diff)
			}
			if h.Len() != len(tt.want) {
				t.Errorf("Len() = %d, want %d", h.Len(), len(tt.want))
			}
		})
	}
}

func TestHistoryOpsIsACopy(t *testing.T) {
	h := NewHistory()
	id := h.Invoke(0, 1, Write, 1, 0, "")
	h.Complete(id, 0, 1)
	ops := h.Ops()
	ops[0].Value = 99
	if got := h.Ops()[0].Value; got != 1 {
		t.Errorf("modifying Ops() result changed the history: value %d, want 1", got)
	}
}

func TestHistoryCheckDoesNotFreeze(t *testing.T) {
	// An op open during Check is treated as unknown; it can still be
	// completed afterwards and is then checked as completed.
	h := NewHistory()
	id := h.Invoke(0, 1, Write, 1, 0, "")
	rd := h.Invoke(1, 1, Read, 0, 20, "")
	h.Complete(rd, 1, 30)
	if res := Check(h, 0); !res.OK {
		t.Fatalf("with open write: %v, want linearizable", res)
	}
	h.Complete(id, 0, 40)
	if res := Check(h, 0); !res.OK || res.Ops != 2 {
		t.Fatalf("after completing write: %v, want linearizable with 2 ops", res)
	}
}

func TestHistoryMisusePanics(t *testing.T) {
	tests := []struct {
		name string
		do   func(h *History)
	}{
		{"negative client", func(h *History) { h.Invoke(-1, 0, Read, 0, 0, "") }},
		{"invalid kind", func(h *History) { h.Invoke(0, 0, Kind(9), 1, 0, "") }},
		{"call at Pending", func(h *History) { h.Invoke(0, 0, Read, 0, Pending, "") }},
		{"unknown id", func(h *History) { h.Complete(OpID(3), 0, 0) }},
		{"negative id", func(h *History) { h.Fail(OpID(-1)) }},
		{"complete twice", func(h *History) {
			id := h.Invoke(0, 0, Read, 0, 0, "")
			h.Complete(id, 0, 1)
			h.Complete(id, 0, 2)
		}},
		{"fail after unknown", func(h *History) {
			id := h.Invoke(0, 0, Write, 1, 0, "")
			h.Unknown(id)
			h.Fail(id)
		}},
		{"unknown after fail", func(h *History) {
			id := h.Invoke(0, 0, Write, 1, 0, "")
			h.Fail(id)
			h.Unknown(id)
		}},
		{"return before call", func(h *History) {
			id := h.Invoke(0, 0, Read, 0, 10, "")
			h.Complete(id, 0, 9)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("did not panic")
				}
			}()
			tt.do(NewHistory())
		})
	}
}

func TestKindString(t *testing.T) {
	got := fmt.Sprint(Read, " ", Write, " ", Kind(7))
	if want := "read write Kind(7)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
