package core

import (
	"math/rand/v2"
	"testing"
)

// soloDriver drives one node that forms its own cluster: messages to
// itself are delivered, disk operations are answered unless held.
type soloDriver struct {
	n       *Node
	replies map[uint64]Reply
	holdIO  bool // leave data disk operations unanswered (a hung disk)
	held    []DiskOp
}

func newSolo(t *testing.T) *soloDriver {
	t.Helper()
	n, err := NewNode(Config{Self: NodeInfo{ID: 1, Addr: "127.0.0.1:7000", VNodes: 128, Incarnation: 1}, Rand: rand.New(rand.NewPCG(1, 1))})
	if err != nil {
		t.Fatal(err)
	}
	d := &soloDriver{n: n, replies: map[uint64]Reply{}}
	for i := 0; i < 200; i++ {
		d.step(Tick{}) // elect itself
	}
	return d
}

func (d *soloDriver) step(ev Event) {
	queue := []Event{ev}
	for len(queue) > 0 {
		d.n.Step(queue[0])
		queue = queue[1:]
		for d.n.HasReady() {
			rd := d.n.Ready()
			for _, m := range rd.Messages {
				queue = append(queue, m)
			}
			for _, op := range rd.Disk {
				if d.holdIO && op.Kind != DiskSync {
					d.held = append(d.held, op)
					continue
				}
				queue = append(queue, DiskDone{ID: op.ID, Err: OK, Meta: op.Meta})
			}
			for _, r := range rd.Replies {
				d.replies[r.ID] = r
			}
			d.n.Advance()
		}
	}
}

// do submits r and waits for its answer at most ticks ticks.
func (d *soloDriver) do(r *Request, ticks int) (Reply, bool) {
	d.step(r)
	return d.wait(r, ticks)
}

func (d *soloDriver) wait(r *Request, ticks int) (Reply, bool) {
	for i := 0; i < ticks; i++ {
		if rep, ok := d.replies[r.ID]; ok {
			return rep, true
		}
		d.step(Tick{})
	}
	rep, ok := d.replies[r.ID]
	return rep, ok
}

// formatAndCreate formats the solo cluster with one copy, waits until it
// serves and creates a 64 MiB VDI; next numbers the requests.
func (d *soloDriver) formatAndCreate(t *testing.T, next func() uint64) uint32 {
	t.Helper()
	if rep, ok := d.do(&Request{ID: next(), Type: ReqFormat, Copies: 1, BlockShift: 22}, 1000); !ok || rep.Code != OK {
		t.Fatalf("format: %+v (answered %v)", rep, ok)
	}
	for i := 0; i < 1000 && !d.n.Serving(); i++ {
		d.step(Tick{})
	}
	rep, ok := d.do(&Request{ID: next(), Type: ReqCreateVDI, Name: "v", Size: 64 << 20, Copies: 1, BlockShift: 22}, 1000)
	if !ok || rep.Code != OK {
		t.Fatalf("create: %+v (answered %v)", rep, ok)
	}
	return rep.VID
}

// TestClientOpTimeout: an operation that cannot settle fails with
// ErrTimeout after OpTimeoutTicks, not before; finished operations leave
// the deadline queue at once.
func TestClientOpTimeout(t *testing.T) {
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	vid := d.formatAndCreate(t, next)
	if rep, ok := d.do(&Request{ID: next(), Type: ReqAttach, VID: vid}, 1000); !ok || rep.Code != OK {
		t.Fatalf("attach: %+v (answered %v)", rep, ok)
	}
	for i := 0; i < 50; i++ {
		w := &Request{ID: next(), Type: ReqWrite, VID: vid, Off: uint64(i) << 12, Data: make([]byte, 4096)}
		if rep, ok := d.do(w, 100); !ok || rep.Code != OK {
			t.Fatalf("write %d: %+v (answered %v)", i, rep, ok)
		}
	}
	d.step(Tick{})
	if q := len(d.n.gw.deadlines); q != 0 {
		t.Fatalf("%d deadlines queued after every operation finished", q)
	}

	d.holdIO = true
	w := &Request{ID: next(), Type: ReqWrite, VID: vid, Off: 1 << 22, Data: make([]byte, 4096)}
	timeout := d.n.t.OpTimeoutTicks
	if rep, ok := d.do(w, timeout-2); ok {
		t.Fatalf("write on a hung disk answered before its timeout: %+v", rep)
	}
	rep, ok := d.wait(w, 4)
	if !ok || rep.Code != ErrTimeout {
		t.Fatalf("write on a hung disk: %+v (answered %v); want ErrTimeout", rep, ok)
	}
	if len(d.held) == 0 {
		t.Fatal("the hung write never reached the disk")
	}
}
