package core

import (
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
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
// newAttachedSolo is a solo node with a formatted cluster and a VDI this
// node has attached, and the request ids to go on with.
func newAttachedSolo(t *testing.T) (*soloDriver, func() uint64, uint32) {
	t.Helper()
	d := newSolo(t)
	id := uint64(100)
	next := func() uint64 { id++; return id }
	vid := d.formatAndCreate(t, next)
	if rep, ok := d.do(&Request{ID: next(), Type: ReqAttach, VID: vid}, 1000); !ok || rep.Code != OK {
		t.Fatalf("attach: %+v (answered %v)", rep, ok)
	}
	return d, next, vid
}

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
	d, next, vid := newAttachedSolo(t)
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

// TestTimersFireInArmingOrder: retry timers live in their own queue, but
// they and the heap's timers due at the same tick fire in the order they
// were armed, as one heap would fire them (the simulator's traces depend
// on it); a retry for a call that was answered does nothing.
func TestTimersFireInArmingOrder(t *testing.T) {
	d := newSolo(t)
	n := d.n
	for n.HasReady() {
		n.Ready()
		n.Advance()
	}
	retry := int64(n.t.RetryTicks)
	var fired []string
	sentAt := func(name string) func() {
		return func() { fired = append(fired, name+"@"+string(rune('0'+len(n.out.Messages)))) }
	}
	call := func(id uint64) {
		n.calls[id] = &call{msg: &Message{Type: MsgLeaseReq, To: 2, ID: id}, onResp: func(*Message) {}}
		n.armRetry(id)
	}
	n.after(retry, sentAt("a"))
	call(1001)
	n.after(retry, sentAt("b"))
	call(1002)
	n.after(retry-1, sentAt("early"))
	call(1003)
	n.cancel(1003) // answered: its retry must not send
	n.after(retry, sentAt("c"))
	for range retry {
		n.Step(Tick{})
	}
	want := []string{"early@0", "a@0", "b@1", "c@2"}
	if diff := cmp.Diff(want, fired); diff != "" {
		t.Fatalf("firing order (name@messages sent before it) (-want +got):\n%s", diff)
	}
	var ids []uint64
	for _, m := range n.out.Messages {
		if m.Type == MsgLeaseReq {
			ids = append(ids, m.ID)
		}
	}
	if diff := cmp.Diff([]uint64{1001, 1002}, ids); diff != "" {
		t.Fatalf("retransmitted calls (-want +got):\n%s", diff)
	}
	if got := len(n.retries); got != 2 {
		t.Fatalf("%d retry timers queued; want the 2 re-armed for the unanswered calls", got)
	}
}
