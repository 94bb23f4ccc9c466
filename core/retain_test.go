package core

import (
	"runtime"
	"testing"
	"weak"
)

// TestCompletedWritesAreNotRetained: once a write has completed, nothing
// in the node keeps its data reachable. A stored object stays in the
// node's object index for good, and its primary queue, sliced from the
// front, kept its last operation (and its data) in the array behind it,
// a payload per object ever written; and the node's output arrays kept
// the last batch of messages and disk writes.
func TestCompletedWritesAreNotRetained(t *testing.T) {
	d, next, vid := newAttachedSolo(t)
	var payloads []weak.Pointer[[4096]byte]
	write := func(off uint64) {
		buf := new([4096]byte)
		buf[0] = byte(off >> 12)
		payloads = append(payloads, weak.Make(buf))
		w := &Request{ID: next(), Type: ReqWrite, VID: vid, Off: off, Data: buf[:]}
		if rep, ok := d.do(w, 100); !ok || rep.Code != OK {
			t.Fatalf("write at %d: %+v (answered %v)", off, rep, ok)
		}
	}
	for obj := uint64(0); obj < 4; obj++ {
		for i := uint64(0); i < 3; i++ {
			write(obj<<22 | i<<12)
		}
	}
	for i := 0; i < 5; i++ {
		d.step(Tick{})
	}
	runtime.GC()
	runtime.GC()
	for i, p := range payloads {
		if p.Value() != nil {
			t.Errorf("write %d: its data is still reachable after it completed", i)
		}
	}
	for oid, o := range d.n.objs {
		if o.queue != nil {
			t.Errorf("object %v: idle, but its primary queue keeps an array (len %d cap %d)", oid, len(o.queue), cap(o.queue))
		}
	}
}
