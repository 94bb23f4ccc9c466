package faults

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepdog-go/sheepdog/linearizability"
)

const blockSize = 4096

// hotBlocks are the 4 KiB blocks every client writes and reads: a few in
// each of three 4 MiB objects, so that objects with different primaries
// are hot.
var hotBlocks = []uint64{0, 1, 1024, 1025, 2048}

// tornBit marks a read whose block mixed several values: no write has
// that value, so the checker rejects the history.
const tornBit = 1 << 63

// recorder is the shared history of a run, safe for concurrent clients.
type recorder struct {
	mu      sync.Mutex
	h       *linearizability.History
	start   time.Time
	writes  map[uint64][]*writeRec // by block key
	flushes map[int][]flushRec     // successful flushes by client
	ops     []opLine               // every operation, for the artifact
	torn    []string
}

type writeRec struct {
	value     uint64
	call, ret int64 // ret: linearizability.Pending while unknown
	ok        bool
}

type flushRec struct{ call, ret int64 }

// opLine is one operation as the history artifact lists it.
type opLine struct {
	Client  int    `json:"client"`
	Block   uint64 `json:"block"`
	Kind    string `json:"kind"`
	Value   string `json:"value"`
	Call    int64  `json:"call_us"`
	Return  int64  `json:"return_us,omitempty"`
	Outcome string `json:"outcome"`
	Node    string `json:"node"`
}

func newRecorder() *recorder {
	return &recorder{h: linearizability.NewHistory(), start: time.Now(), writes: map[uint64][]*writeRec{}, flushes: map[int][]flushRec{}}
}

func (r *recorder) now() int64 { return time.Since(r.start).Microseconds() }

func blockKey(client int, block uint64) uint64 { return uint64(client)<<32 | block }

// client is one VM's disk: a VDI of its own, one NBD connection at a
// time (through whichever node it could attach at), several requests in
// flight on it.
type client struct {
	id  int
	vdi string
	src string // the client's own loopback address
	w   *workload
	seq atomic.Uint64

	mu    sync.Mutex
	conn  *nbdConn
	gen   int
	node  *node
	pick  int
	fails int // consecutive errors on this connection
}

// workload is the clients of a run.
type workload struct {
	c         *cluster
	rec       *recorder
	clients   []*client
	opTimeout time.Duration
	log       *slog.Logger
	seed      uint64

	ops, okOps, failedOps, unknownOps, reconnects atomic.Int64
}

// attacher returns the node client i writes through now (nil if none).
func (w *workload) attacher(i int) *node {
	cl := w.clients[i%len(w.clients)]
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.conn == nil {
		return nil
	}
	return cl.node
}

// connect returns the client's connection, opening one when it has none:
// through the nodes in turn, retrying while the VDI is still attached
// elsewhere (its old node has not let go yet).
func (cl *client) connect(ctx context.Context) (*nbdConn, int, *node, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.conn != nil {
		select {
		case <-cl.conn.dead:
			cl.conn = nil
		default:
			return cl.conn, cl.gen, cl.node, nil
		}
	}
	var last error
	for attempt := 0; ; attempt++ {
		if ctx.Err() != nil {
			return nil, 0, nil, fmt.Errorf("client %d: no node took %s: %w (last: %w)", cl.id, cl.vdi, ctx.Err(), last)
		}
		nodes := cl.w.c.members()
		n := nodes[cl.pick%len(nodes)]
		cl.pick++
		if n.running() {
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			conn, err := cl.w.c.ns.Dial(dctx, cl.src, n.nbd())
			cancel()
			if err == nil {
				var nc *nbdConn
				nc, err = nbdHandshake(conn, cl.vdi)
				if err != nil {
					conn.Close()
				} else {
					cl.conn, cl.node, cl.fails = nc, n, 0
					cl.gen++
					cl.w.reconnects.Add(1)
					cl.w.log.Debug("client attached", "client", cl.id, "node", n.idx, "ip", n.ip, "attempt", attempt)
					return nc, cl.gen, n, nil
				}
			}
			last = err
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// broken drops connection gen (a request on it timed out or it died, or
// it kept failing): the client goes elsewhere.
func (cl *client) broken(gen int, why string) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.gen != gen || cl.conn == nil {
		return
	}
	cl.w.log.Debug("client leaves its node", "client", cl.id, "node", cl.node.idx, "why", why)
	cl.conn.Close()
	cl.conn = nil
}

// failed counts an errno on connection gen; after a few in a row the
// client tries another node.
func (cl *client) failed(gen int, errno uint32) {
	cl.mu.Lock()
	same := cl.gen == gen
	if same {
		cl.fails++
	}
	many := same && cl.fails >= 3
	cl.mu.Unlock()
	if many {
		cl.broken(gen, fmt.Sprintf("errno %d three times in a row", errno))
	}
}

func (cl *client) succeeded(gen int) {
	cl.mu.Lock()
	if cl.gen == gen {
		cl.fails = 0
	}
	cl.mu.Unlock()
}

// worker issues operations until ctx ends.
func (cl *client) worker(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		conn, gen, n, err := cl.connect(ctx)
		if err != nil {
			return
		}
		r := rng.IntN(100)
		switch {
		case r < 45:
			cl.write(ctx, conn, gen, n, hotBlocks[rng.IntN(len(hotBlocks))], rng.IntN(10) == 0)
		case r < 90:
			cl.read(ctx, conn, gen, n, hotBlocks[rng.IntN(len(hotBlocks))])
		default:
			cl.flush(ctx, conn, gen, n)
		}
		time.Sleep(time.Duration(1+rng.IntN(4)) * time.Millisecond)
	}
}

// value is a unique non-zero value: client id and sequence.
func (cl *client) value() uint64 { return uint64(cl.id+1)<<40 | cl.seq.Add(1) }

func (cl *client) write(ctx context.Context, conn *nbdConn, gen int, n *node, block uint64, fua bool) {
	w := cl.w
	val := cl.value()
	data := make([]byte, blockSize)
	for i := 0; i < blockSize; i += 8 {
		binary.LittleEndian.PutUint64(data[i:], val)
	}
	note := fmt.Sprintf("c%d write node%d(%s)", cl.id, n.idx, n.ip)
	var flags uint16
	if fua {
		flags = nbdFlagFUA
		note += " fua"
	}
	rec := w.rec
	rec.mu.Lock()
	call := rec.now()
	id := rec.h.Invoke(cl.id, blockKey(cl.id, block), linearizability.Write, val, call, note)
	wr := &writeRec{value: val, call: call, ret: linearizability.Pending}
	rec.writes[blockKey(cl.id, block)] = append(rec.writes[blockKey(cl.id, block)], wr)
	rec.mu.Unlock()

	octx, cancel := context.WithTimeout(ctx, w.opTimeout)
	errno, _, err := conn.do(octx, nbdCmdWrite, flags, block*blockSize, blockSize, data)
	cancel()
	w.ops.Add(1)
	rec.mu.Lock()
	ret := rec.now()
	outcome := "ok"
	switch {
	case err != nil:
		rec.h.Unknown(id)
		outcome = "unknown: " + err.Error()
	case errno != 0:
		rec.h.Unknown(id) // an error may still have reached some replicas
		outcome = fmt.Sprintf("unknown: errno %d", errno)
	default:
		rec.h.Complete(id, 0, ret)
		wr.ret, wr.ok = ret, true
	}
	rec.ops = append(rec.ops, opLine{Client: cl.id, Block: block, Kind: "write", Value: fmt.Sprintf("%#x", val), Call: call, Return: ret, Outcome: outcome, Node: n.ip})
	rec.mu.Unlock()
	cl.settle(gen, errno, err)
}

func (cl *client) read(ctx context.Context, conn *nbdConn, gen int, n *node, block uint64) (uint64, bool) {
	w := cl.w
	rec := w.rec
	note := fmt.Sprintf("c%d read node%d(%s)", cl.id, n.idx, n.ip)
	rec.mu.Lock()
	call := rec.now()
	id := rec.h.Invoke(cl.id, blockKey(cl.id, block), linearizability.Read, 0, call, note)
	rec.mu.Unlock()

	octx, cancel := context.WithTimeout(ctx, w.opTimeout)
	errno, data, err := conn.do(octx, nbdCmdRead, 0, block*blockSize, blockSize, nil)
	cancel()
	w.ops.Add(1)
	rec.mu.Lock()
	ret := rec.now()
	outcome := "ok"
	var val uint64
	ok := false
	switch {
	case err != nil:
		rec.h.Fail(id) // a read has no effect: dropping it hides nothing
		outcome = "unknown: " + err.Error()
	case errno != 0:
		rec.h.Fail(id)
		outcome = fmt.Sprintf("failed: errno %d", errno)
	default:
		val = binary.LittleEndian.Uint64(data)
		for i := 8; i < len(data); i += 8 {
			if binary.LittleEndian.Uint64(data[i:]) != val {
				rec.torn = append(rec.torn, fmt.Sprintf("client %d block %d read at %dµs through %s mixes %#x and %#x",
					cl.id, block, ret, n.ip, val, binary.LittleEndian.Uint64(data[i:])))
				val |= tornBit
				break
			}
		}
		rec.h.Complete(id, val, ret)
		ok = true
	}
	rec.ops = append(rec.ops, opLine{Client: cl.id, Block: block, Kind: "read", Value: fmt.Sprintf("%#x", val), Call: call, Return: ret, Outcome: outcome, Node: n.ip})
	rec.mu.Unlock()
	cl.settle(gen, errno, err)
	return val, ok
}

func (cl *client) flush(ctx context.Context, conn *nbdConn, gen int, n *node) bool {
	w := cl.w
	rec := w.rec
	rec.mu.Lock()
	call := rec.now()
	rec.mu.Unlock()
	octx, cancel := context.WithTimeout(ctx, w.opTimeout)
	errno, _, err := conn.do(octx, nbdCmdFlush, 0, 0, 0, nil)
	cancel()
	w.ops.Add(1)
	rec.mu.Lock()
	ret := rec.now()
	outcome := "ok"
	switch {
	case err != nil:
		outcome = "unknown: " + err.Error()
	case errno != 0:
		outcome = fmt.Sprintf("failed: errno %d", errno)
	default:
		rec.flushes[cl.id] = append(rec.flushes[cl.id], flushRec{call: call, ret: ret})
	}
	rec.ops = append(rec.ops, opLine{Client: cl.id, Kind: "flush", Call: call, Return: ret, Outcome: outcome, Node: n.ip})
	rec.mu.Unlock()
	cl.settle(gen, errno, err)
	return err == nil && errno == 0
}

// settle counts an outcome and moves the client on after a broken
// connection or repeated errors.
func (cl *client) settle(gen int, errno uint32, err error) {
	w := cl.w
	switch {
	case err != nil:
		w.unknownOps.Add(1)
		why := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			why = "request timed out"
		}
		cl.broken(gen, why)
	case errno != 0:
		w.failedOps.Add(1)
		cl.failed(gen, errno)
	default:
		w.okOps.Add(1)
		cl.succeeded(gen)
	}
}

// run starts workers per client and returns when ctx ends.
func (w *workload) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for _, cl := range w.clients {
		for k := range workers {
			rng := rand.New(rand.NewPCG(w.seed, uint64(cl.id)<<8|uint64(k)))
			wg.Go(func() { cl.worker(ctx, rng) })
		}
	}
	wg.Wait()
}

// final flushes every client and reads each hot block once more (into
// the history), then disconnects; it returns what every block holds.
func (w *workload) final(ctx context.Context) (map[uint64]uint64, []string) {
	got := map[uint64]uint64{}
	var problems []string
	// One bound for all clients: a cluster that serves nobody fails the
	// run once, not once per client.
	fctx, fcancel := context.WithTimeout(ctx, 60*time.Second)
	defer fcancel()
	for _, cl := range w.clients {
		cctx, cancel := context.WithCancel(fctx)
		done := map[uint64]bool{}
		flushed := false
		for cctx.Err() == nil && (!flushed || len(done) < len(hotBlocks)) {
			conn, gen, n, err := cl.connect(cctx)
			if err != nil {
				break
			}
			if !flushed {
				flushed = cl.flush(cctx, conn, gen, n)
				continue
			}
			for _, b := range hotBlocks {
				if done[b] {
					continue
				}
				if v, ok := cl.read(cctx, conn, gen, n, b); ok {
					got[blockKey(cl.id, b)] = v
					done[b] = true
				}
			}
		}
		cancel()
		if !flushed || len(done) < len(hotBlocks) {
			problems = append(problems, fmt.Sprintf("client %d: the final flush and reads of %s did not succeed within 60s after the faults healed", cl.id, cl.vdi))
		}
		cl.mu.Lock()
		if cl.conn != nil {
			cl.conn.disconnect()
			cl.conn = nil
		}
		cl.mu.Unlock()
	}
	return got, problems
}

// checkDurable: the value each block holds at the end must come from a
// write that no acknowledged write flushed after it strictly follows.
func (w *workload) checkDurable(got map[uint64]uint64) []string {
	rec := w.rec
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var problems []string
	for _, cl := range w.clients {
		var flushedBefore int64 = -1 // writes that returned before this were flushed
		for _, f := range rec.flushes[cl.id] {
			flushedBefore = max(flushedBefore, f.call)
		}
		for _, b := range hotBlocks {
			key := blockKey(cl.id, b)
			val, ok := got[key]
			if !ok {
				continue
			}
			var latestFlushedCall int64 = -1
			for _, wr := range rec.writes[key] {
				if wr.ok && wr.ret < flushedBefore {
					latestFlushedCall = max(latestFlushedCall, wr.call)
				}
			}
			good := val == 0 && latestFlushedCall < 0
			for _, wr := range rec.writes[key] {
				if wr.value == val && wr.ret >= latestFlushedCall {
					good = true
				}
			}
			if !good {
				problems = append(problems, fmt.Sprintf("client %d block %d holds %#x at the end: older than an acknowledged, flushed write (lost write)", cl.id, b, val))
			}
		}
	}
	return problems
}

// summary is a one-line count of operations.
func (w *workload) summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ops=%d ok=%d failed=%d unknown=%d attaches=%d", w.ops.Load(), w.okOps.Load(), w.failedOps.Load(), w.unknownOps.Load(), w.reconnects.Load())
	return b.String()
}
